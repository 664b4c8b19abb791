"""POST /v1/models/{model}/attributions over HTTP: every method, both encodings, both answers,
every bad input a 4xx, and the served model never touched."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from service.routers.attributions import EXAMPLES
from tests.api.test_bad_input import problem

URL = "/v1/models/shapes/attributions"


def decode(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.array(Image.open(io.BytesIO(raw)).convert("RGB"))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_docs_example_answers(http: httpx.Client, name: str) -> None:
    body = EXAMPLES[name]["value"]
    response = http.post(URL, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["method"] == body["method"] and answer["input_size"] == [64, 64]
    predictions = answer["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["label"] == body["sample"]  # the samples are easy
    assert sum(p["probability"] for p in predictions) <= 1.0 + 1e-6
    for item in answer["attributions"]:
        assert decode(item["overlay"]).shape == (64, 64, 3)
        assert decode(item["map"]).shape == (64, 64, 3)
        stats = item["stats"]
        assert stats["min"] <= stats["mean"] <= stats["max"]
    wanted = body.get("target")
    if isinstance(wanted, list):
        assert [a["target"]["label"] for a in answer["attributions"]] == wanted


def test_integrated_gradients_reports_its_completeness(http: httpx.Client) -> None:
    answer = http.post(URL, json=EXAMPLES["integrated_gradients"]["value"]).json()
    [item] = answer["attributions"]
    assert item["completeness"]["relative_error"] < 0.05
    assert item["completeness"]["sum"] == pytest.approx(item["stats"]["sum"], rel=1e-3)
    assert answer["signed"] is True


def test_an_upload_with_targets_as_repeated_fields(http: httpx.Client) -> None:
    triangle = http.get("/v1/samples/triangle").content
    response = http.post(
        URL,
        files={"image": ("triangle.png", triangle, "image/png")},
        data={"method": "saliency", "target": ["triangle", "3"], "colormap": "gray"},
    )
    assert response.status_code == 200, response.text
    targets = [a["target"] for a in response.json()["attributions"]]
    assert [(t["index"], t["label"]) for t in targets] == [(2, "triangle"), (3, "star")]


def test_accept_png_gives_the_overlay_or_the_map(http: httpx.Client) -> None:
    body = {**EXAMPLES["gradcam"]["value"]}
    response = http.post(URL, json=body, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-target-label"] == "triangle"
    assert response.headers["x-layer"] == "block4.relu"
    json_answer = http.post(URL, json=body).json()
    [item] = json_answer["attributions"]
    assert np.array_equal(decode(response.content), decode(item["overlay"]))
    assert response.headers["x-map-peak"] == ",".join(map(str, item["stats"]["peak"]))
    alone = http.post(URL, json={**body, "picture": "map"}, headers={"Accept": "image/png"})
    assert np.array_equal(decode(alone.content), decode(item["map"]))


def test_a_multi_head_model_answers_for_the_output_chosen(http: httpx.Client) -> None:
    url = "/v1/models/heads/attributions"
    image = base64.b64encode(http.get("/v1/samples/circle").content).decode()
    body = problem(
        http.post(url, json={"image": image, "method": "saliency"}), 422, "invalid_argument"
    )
    assert "3 outputs" in body["detail"] and "'output' (0..2)" in body["detail"]
    response = http.post(
        url, json={"image": image, "method": "gradcam", "layer": "relu", "output": 1}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["input_size"] == [12, 16] and len(answer["predictions"]) == 5
    assert decode(answer["attributions"][0]["map"]).shape == (12, 16, 3)


def hooks(app: FastAPI) -> int:
    model = app.state.registry.get("shapes").module
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
        for m in model.modules()
    )


def test_concurrent_requests_agree_and_leave_the_served_model_alone(
    http: httpx.Client, app: FastAPI
) -> None:
    before = hooks(app)
    body = EXAMPLES["guided_gradcam"]["value"]
    alone = http.post(URL, json=body).json()
    maps = {"sample": "triangle", "layers": ["block4.relu"]}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: http.post(URL, json=body), range(4)))
        features = list(
            pool.map(lambda _: http.post("/v1/models/shapes/feature-maps", json=maps), range(2))
        )
    assert all(r.status_code == 200 for r in answers + features)
    assert all(r.json()["attributions"] == alone["attributions"] for r in answers)
    model = app.state.registry.get("shapes").module
    assert hooks(app) == before
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def on_triangle(method: str, **fields: object) -> dict[str, object]:
    """A request body for ``method`` on the ``triangle`` sample, with ``fields``."""
    return {"sample": "triangle", "method": method, **fields}


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"sample": "triangle"}, "invalid_request", "method"),
        (on_triangle("gradcm"), "invalid_argument", "'gradcam'"),
        (on_triangle("gradcam"), "invalid_argument", "'block4.conv'"),
        (on_triangle("gradcam", layer="fc"), "unsupported_layer", "(C, H, W)"),
        (on_triangle("gradcam", layer="blok4"), "unknown_layer", "block4"),
        (on_triangle("saliency", target="circel"), "invalid_argument", "'circle'"),
        (on_triangle("saliency", target=12), "invalid_argument", "0..11"),
        (on_triangle("saliency", target=[]), "invalid_argument", "empty"),
        (on_triangle("saliency", target=-1), "invalid_request", "target"),
        (on_triangle("saliency", output=0), "invalid_argument", "omit"),
        (on_triangle("integrated_gradients", steps=1000), "too_long_for_sync", "2500000"),
        (on_triangle("integrated_gradients", steps=5000), "invalid_request", "steps"),
        (on_triangle("occlusion", window=2, stride=1), "too_long_for_sync", "stride"),
        (on_triangle("occlusion", window=65), "invalid_argument", "1..64"),
        (on_triangle("saliency", opacity=2), "invalid_request", "opacity"),
        (on_triangle("saliency", colormap="jett"), "invalid_argument", "'jet'"),
        (on_triangle("saliency", bogus=1), "invalid_request", "bogus"),
        ({"sample": "octagon", "method": "saliency"}, "invalid_argument", "triangle"),
        ({"image": "not base64!", "method": "saliency"}, "invalid_image", "base64"),
        ({"image": "aGVsbG8=", "method": "saliency"}, "invalid_image", "PNG"),
        (
            {"image": "aGVsbG8=", "sample": "star", "method": "saliency"},
            "invalid_request",
            "exactly one",
        ),
    ],
)
def test_bad_requests_are_clear_4xx(
    http: httpx.Client, body: dict[str, Any], code: str, named: str
) -> None:
    assert named in problem(http.post(URL, json=body), 422, code)["detail"]


def test_other_bad_requests(http: httpx.Client) -> None:
    body = {"sample": "star", "method": "saliency", "target": ["star", "cross"]}
    problem(http.post(URL, json=body, headers={"Accept": "image/png"}), 406, "not_acceptable")
    problem(http.post("/v1/models/nope/attributions", json=body), 404, "unknown_model")
    problem(
        http.post(URL, content=b"method=saliency", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    problem(
        http.post(URL, content=b"{", headers={"Content-Type": "application/json"}),
        422,
        "invalid_request",
    )
    problem(
        http.post(URL, data={"method": "saliency"}, files={"x": ("a", b"b")}),
        422,
        "invalid_request",
    )


def test_openapi_declares_the_endpoint_and_its_examples(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/v1/models/{model}/attributions"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == set(EXAMPLES)
    assert {"200", "404", "406", "413", "415", "422", "503"} <= set(operation["responses"])
