"""Faithfulness scores over HTTP: on the planted quadrant model, the served AUCs equal the
documented protocol computed in the test, and beat the random reference; bad metric requests
are clear 4xx, and work past the synchronous limit is pointed to the job route."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import safetensors.numpy
import torch
from PIL import Image

from cnnviz.attribution import attribute
from tests.api.nets import Quadrant
from tests.api.test_bad_input import problem
from tests.core.test_faithfulness import (
    planted_image,
    reference_curves,
    reference_random,
    trapezoid,
)

URL = "/v1/models/quadrant/attributions"
METRICS = {"metrics": ["deletion", "insertion"], "metric_steps": 16, "random_maps": 4}


def planted_png() -> tuple[str, torch.Tensor]:
    """The planted image as a grey PNG (base64), and the model input it decodes to."""
    grey = (planted_image()[0, 0] * 255).round().to(torch.uint8)
    out = io.BytesIO()
    Image.fromarray(grey.numpy(), mode="L").save(out, format="PNG")
    x = grey.float().div(255).view(1, 1, 16, 16)  # mean 0, std 1
    return base64.b64encode(out.getvalue()).decode(), x


@pytest.mark.parametrize(
    ("method", "layer"), [("saliency", None), ("gradcam", "pool"), ("integrated_gradients", None)]
)
def test_served_aucs_equal_the_documented_protocol(
    http: httpx.Client, method: str, layer: str | None
) -> None:
    image, x = planted_png()
    body = {"image": image, "method": method, "target": 0, "metric_seed": 3, **METRICS}
    if layer:
        body["layer"] = layer
    response = http.post(URL, json=body)
    assert response.status_code == 200, response.text
    [item] = response.json()["attributions"]
    scores = item["faithfulness"]
    # The map the metrics ranked, as numbers: the same request with ?format=npy.
    raw = http.post(URL, json=body, params={"format": "npy"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/x-npy"
    assert raw.headers["x-targets"] == "0"
    found = torch.from_numpy(np.load(io.BytesIO(raw.content)))
    assert found.dtype == torch.float32 and found.shape == (1, 16, 16)
    model = Quadrant()
    same = attribute(model, x, method, targets=[0], layer=layer, steps=64).maps
    assert torch.allclose(found, same, atol=1e-6)
    found = found[0]
    curves = reference_curves(model, x, found, 0, 16)
    assert scores["deletion_curve"] == pytest.approx(curves["deletion"], abs=1e-5)
    assert scores["insertion_curve"] == pytest.approx(curves["insertion"], abs=1e-5)
    assert scores["deletion_auc"] == pytest.approx(trapezoid(curves["deletion"]), abs=1e-4)
    assert scores["insertion_auc"] == pytest.approx(trapezoid(curves["insertion"]), abs=1e-4)
    random = reference_random(model, x, 0, 16, 4, 3)
    assert scores["random"]["deletion_auc"] == pytest.approx(random["deletion"], abs=1e-4)
    assert scores["random"]["insertion_auc"] == pytest.approx(random["insertion"], abs=1e-4)
    # A map of what the model uses beats random maps.
    assert scores["deletion_auc"] < scores["random"]["deletion_auc"]
    assert scores["insertion_auc"] > scores["random"]["insertion_auc"]


def test_metrics_in_a_multipart_request_and_none_by_default(http: httpx.Client) -> None:
    image, _ = planted_png()
    upload = {"image": ("q.png", base64.b64decode(image), "image/png")}
    fields = {
        "method": "saliency",
        "metrics": ["deletion"],
        "metric_steps": "4",
        "random_maps": "0",
    }
    response = http.post(URL, files=upload, data=fields)
    assert response.status_code == 200, response.text
    [item] = response.json()["attributions"]
    scores = item["faithfulness"]
    assert len(scores["deletion_curve"]) == 5 and scores["insertion_auc"] is None
    assert scores["random"] is None
    plain = http.post(URL, json={"image": image, "method": "saliency"}).json()
    assert plain["attributions"][0]["faithfulness"] is None


def test_bad_metric_requests_are_clear_4xx(http: httpx.Client) -> None:
    image, _ = planted_png()
    base = {"image": image, "method": "saliency"}
    problem(http.post(URL, json={**base, "metrics": ["ablation"]}), 422, "invalid_request")
    problem(http.post(URL, json={**base, "metric_steps": 0}), 422, "invalid_request")
    problem(http.post(URL, json={**base, "random_maps": 65}), 422, "invalid_request")
    # A model with one output score: its softmax is constant.
    circle = base64.b64encode(http.get("/v1/samples/circle").content).decode()
    single = {"image": circle, "method": "saliency", "output": 2, "metrics": ["deletion"]}
    detail = problem(
        http.post("/v1/models/heads/attributions", json=single), 422, "invalid_argument"
    )
    assert "softmax is constant" in detail["detail"]


def test_default_metrics_fit_the_synchronous_limit_on_64_px_and_more_go_to_jobs(
    http: httpx.Client,
) -> None:
    body = {"sample": "triangle", "method": "gradcam", "layer": "block4.relu"}
    metrics = {"metrics": ["deletion", "insertion"]}  # 2 × 33 × (1 + 8) = 594 images
    response = http.post("/v1/models/shapes/attributions", json={**body, **metrics})
    assert response.status_code == 200, response.text
    scores = response.json()["attributions"][0]["faithfulness"]
    assert len(scores["deletion_curve"]) == 33
    assert scores["deletion_auc"] < scores["random"]["deletion_auc"]
    two = {**body, **metrics, "target": ["triangle", "star"]}
    detail = problem(
        http.post("/v1/models/shapes/attributions", json=two), 422, "too_long_for_sync"
    )["detail"]
    assert "attribution-jobs" in detail and "image-pixels" in detail


def test_raw_maps_as_npy_and_safetensors(http: httpx.Client) -> None:
    image, _ = planted_png()
    body = {"image": image, "method": "saliency", "target": ["quadrant", "constant"]}
    npy = http.post(URL, json=body, headers={"Accept": "application/x-npy"})
    assert npy.status_code == 200, npy.text
    maps = np.load(io.BytesIO(npy.content))
    # Saliency of the planted model: |d score / d pixel| is 1/4 on the quadrant, else 0; the
    # constant class has no gradient at all.
    expected = np.zeros((2, 16, 16), dtype=np.float32)
    expected[0, :8, :8] = 0.25
    assert maps.dtype == np.float32 and np.array_equal(maps, expected)
    assert npy.headers["x-targets"] == "0,1"
    assert npy.headers["x-target-labels"] == "quadrant,constant"
    stored = http.post(URL, json=body, params={"format": "safetensors"})
    assert stored.headers["content-type"] == "application/vnd.safetensors"
    arrays = safetensors.numpy.load(stored.content)
    assert np.array_equal(arrays["maps"], expected) and arrays["targets"].tolist() == [0, 1]
    refused = problem(http.post(URL, json=body, params={"format": "tiff"}), 422, "invalid_request")
    assert "format" in str(refused)


def upload(width: int, height: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue(), pixels


@pytest.mark.parametrize("fit", ["crop", "stretch"])
def test_overlay_full_is_drawn_on_the_upload_at_its_own_size(http: httpx.Client, fit: str) -> None:
    png, pixels = upload(40, 16)  # the model sees a centred 16×16 under crop
    fields = {"method": "saliency", "overlay_full": "true", "fit": fit, "opacity": "1"}
    response = http.post(URL, files={"image": ("wide.png", png, "image/png")}, data=fields)
    assert response.status_code == 200, response.text
    [item] = response.json()["attributions"]
    full = np.array(Image.open(io.BytesIO(base64.b64decode(item["overlay_full"]))))
    assert full.shape == (16, 40, 3)
    changed = (full != pixels).any(axis=2)
    if fit == "crop":
        # The margins the model did not see (12 px each side) are the image alone.
        assert not changed[:, :12].any() and not changed[:, 28:].any()
        assert changed[:, 12:28].all()  # opacity 1: the map's colours everywhere it saw
    else:
        assert changed.all()
    # Without the option the answer carries no full-size picture.
    plain = http.post(
        URL, files={"image": ("wide.png", png, "image/png")}, data={"method": "saliency"}
    )
    assert plain.json()["attributions"][0]["overlay_full"] is None
