"""POST /v1/models/{model}/feature-maps over HTTP: both encodings, both answers, exact values."""

from __future__ import annotations

import base64
import io

import httpx
import matplotlib
import numpy as np
import pytest
from PIL import Image

from cnnviz import precision as precision_module
from cnnviz.data.shapes import sample_image
from cnnviz.featuremaps import feature_maps
from cnnviz.imaging import preprocess
from cnnviz.models.shapes import MEAN, STD, load_shapes_net
from cnnviz.precision import resolve_precision

# 8×8, constant down each column; levels chosen so that no colour lies on a bin edge.
GREY = np.array([[0, 20, 60, 100, 150, 200, 200, 200]] * 8, dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.array(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_a_sample_through_two_layers_of_shapes(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/shapes/feature-maps",
        json={"sample": "triangle", "layers": ["block1.conv", "block3.conv"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "shapes"
    first, third = body["layers"]
    assert first["name"] == "block1.conv" and first["shape"] == [16, 64, 64]
    assert first["grid"] == {
        "rows": 4,
        "columns": 4,
        "tile": [64, 64],
        "padding": 1,
        "channels": list(range(16)),
    }
    assert third["shape"] == [64, 16, 16] and len(third["stats"]) == 64
    assert decode(first["image"]).shape == (4 * 65 + 1, 4 * 65 + 1, 3)
    stats = first["stats"][0]
    assert set(stats) == {"channel", "min", "max", "mean"}
    assert stats["min"] <= stats["mean"] <= stats["max"]


def test_exact_stats_and_colours_of_an_uploaded_image(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/tiny/feature-maps",
        files={"image": ("grey.png", png(GREY), "image/png")},
        data={"layers": ["conv"], "channels": ["2", "1"], "colormap": "gray", "padding": "0"},
    )
    assert response.status_code == 200, response.text
    (layer,) = response.json()["layers"]
    # Channel 2 is 2x, channel 1 is 1 - x, where x is the grey level in [0, 1].
    mean = GREY.mean() / 255
    assert layer["grid"]["channels"] == [2, 1]
    top = 200 / 255
    assert layer["stats"][0] == pytest.approx(
        {"channel": 2, "min": 0, "max": 2 * top, "mean": 2 * mean}, abs=1e-6
    )
    assert layer["stats"][1] == pytest.approx(
        {"channel": 1, "min": 1 - top, "max": 1, "mean": 1 - mean}, abs=1e-6
    )
    rgb = decode(layer["image"])
    assert rgb.shape == (8, 16, 3)
    gray = matplotlib.colormaps["gray"].resampled(255)
    # Each tile spans its own range: x / max(x) for channel 2, the reverse for channel 1.
    assert np.array_equal(rgb[:, :8], gray(GREY / 200, bytes=True)[..., :3])
    assert np.array_equal(rgb[:, 8:], gray((200 - GREY.astype(int)) / 200, bytes=True)[..., :3])


def test_json_with_a_base64_image_and_top_k(http: httpx.Client) -> None:
    data = base64.b64encode(png(GREY)).decode()
    response = http.post(
        "/v1/models/tiny/feature-maps",
        json={"image": f"data:image/png;base64,{data}", "layers": ["relu"], "top_k": 2},
    )
    assert response.status_code == 200, response.text
    (layer,) = response.json()["layers"]
    assert layer["grid"]["channels"] == [2, 1]  # means 2x̄ > 1 - x̄ > x̄, as x̄ = 0.46


def test_accept_png_returns_the_grid_itself(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/shapes/feature-maps",
        json={"sample": "star", "layers": ["block2.conv"], "top_k": 8, "scale": 2},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-layer-shape"] == "32,32,32"
    assert response.headers["x-grid-tile"] == "64,64"
    assert len(response.headers["x-grid-channels"].split(",")) == 8
    columns = int(response.headers["x-grid-columns"])
    assert decode(response.content).shape[1] == columns * 65 + 1


def test_json_is_the_default_for_any_accept(http: httpx.Client) -> None:
    for accept in ("*/*", "application/json", "image/png;q=0.5, application/json"):
        response = http.post(
            "/v1/models/tiny/feature-maps",
            json={"sample": "circle", "layers": ["conv"]},
            headers={"Accept": accept},
        )
        assert response.headers["content-type"] == "application/json", accept


def test_samples_are_listed_and_served(http: httpx.Client) -> None:
    samples = http.get("/v1/samples").json()["samples"]
    assert {"name": "triangle", "url": "/v1/samples/triangle"} in samples
    response = http.get("/v1/samples/triangle")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    missing = http.get("/v1/samples/pentagon")
    assert missing.status_code == 404 and "triangle" in missing.json()["detail"]


def test_openapi_documents_both_encodings_with_working_examples(http: httpx.Client) -> None:
    operation = http.get("/openapi.json").json()["paths"]["/v1/models/{model}/feature-maps"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "image/png" in operation["responses"]["200"]["content"]
    examples = content["application/json"]["examples"]
    assert len(examples) >= 2
    for name, example in examples.items():
        response = http.post("/v1/models/shapes/feature-maps", json=example["value"])
        assert response.status_code == 200, (name, response.text)
    assert http.get("/docs").status_code == 200


def test_fp32_is_the_exact_default_and_reduced_precision_is_asked_for(
    http: httpx.Client,
) -> None:
    def ask(**extra: object) -> dict:  # type: ignore[type-arg]
        body = {"sample": "star", "layers": ["block2.conv"], **extra}
        response = http.post("/v1/models/shapes/feature-maps", json=body)
        assert response.status_code == 200, response.text
        (layer,) = response.json()["layers"]
        return layer  # type: ignore[no-any-return]

    x = preprocess(sample_image("star"), size=(64, 64), channels=3, mean=MEAN, std=STD)
    [exact] = feature_maps(load_shapes_net(), x, ["block2.conv"])
    default = ask()
    assert [s["max"] for s in default["stats"]] == exact.stats[:, 1].tolist()  # to the bit
    assert ask(precision="fp32") == default
    reduced = ask(precision="bf16")
    assert reduced["shape"] == default["shape"]
    ours = np.array([s["mean"] for s in reduced["stats"]])
    theirs = np.array([s["mean"] for s in default["stats"]])
    assert not np.array_equal(ours, theirs)  # bf16 rounding shows in the numbers ...
    assert np.allclose(ours, theirs, rtol=0.05, atol=0.05)  # ... and no more than that
    refused = http.post(
        "/v1/models/shapes/feature-maps",
        json={"sample": "star", "layers": ["block2.conv"], "precision": "fp8"},
    )
    assert refused.status_code == 422 and "'bf16'" in refused.json()["detail"]


@pytest.mark.parametrize("bf16_is_faster", [True, False])
def test_the_answer_says_which_precision_the_forward_ran_in(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch, bf16_is_faster: bool
) -> None:
    # The server runs in this process: both kinds of CPU, whatever this machine is.
    monkeypatch.setattr(precision_module, "cpu_prefers_bf16", lambda: bf16_is_faster)
    body = {"sample": "star", "layers": ["block2.conv"]}
    url = "/v1/models/shapes/feature-maps"
    assert http.post(url, json=body).json()["precision"] == "fp32"
    assert http.post(url, json={**body, "precision": "bf16"}).json()["precision"] == "bf16"
    # auto: what the CPU resolves it to, in JSON and in a PNG's header
    auto = resolve_precision("auto", "cpu").precision
    assert auto == ("bf16" if bf16_is_faster else "fp32")
    assert http.post(url, json={**body, "precision": "auto"}).json()["precision"] == auto
    png = http.post(url, json={**body, "precision": "auto"}, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["X-Precision"] == auto


def test_a_feature_map_answer_is_not_gzipped_but_other_json_is(http: httpx.Client) -> None:
    # The answer is mostly base64 PNG: gzip would cost about as much as the PNG for little.
    body = {"sample": "triangle", "layers": ["block1.conv", "block3.conv"]}
    gzip = {"Accept-Encoding": "gzip"}
    answer = http.post("/v1/models/shapes/feature-maps", json=body, headers=gzip)
    assert answer.status_code == 200
    assert len(answer.content) > 1024  # large enough that the middleware would compress it
    assert "content-encoding" not in answer.headers
    assert answer.json()["layers"][0]["name"] == "block1.conv"
    layers = http.get("/v1/models/shapes/layers", headers=gzip)
    assert layers.headers["content-encoding"] == "gzip"
