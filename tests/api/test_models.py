"""GET /v1/models and GET /v1/models/{model}/layers over HTTP."""

from __future__ import annotations

import httpx


def test_the_registry_lists_the_builtin_and_configured_models(http: httpx.Client) -> None:
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert {"shapes", "tiny"} <= set(models)
    shapes = models["shapes"]
    assert shapes["source"] == "builtin" and shapes["input_size"] == [64, 64]
    assert "triangle" in shapes["labels"]
    assert models["tiny"]["channels"] == 1


def test_layers_have_kinds_and_output_shapes(http: httpx.Client) -> None:
    body = http.get("/v1/models/tiny/layers").json()
    assert body["input_shape"] == [1, 8, 8]
    assert {
        "name": "conv",
        "kind": "Conv2d",
        "shape": [3, 8, 8],
        "axes": "CHW",
        "units": 3,
        "token_grid": None,
        "prefix_tokens": None,
        "features_first": False,
        "axes_note": None,
    } in body["layers"]
    shapes = {
        layer["name"]: layer for layer in http.get("/v1/models/shapes/layers").json()["layers"]
    }
    assert shapes["block1.conv"]["shape"] == [16, 64, 64]
    assert shapes["block4.conv"]["shape"] == [128, 8, 8]
    assert shapes["fc"]["shape"] == [12]
    assert (shapes["fc"]["axes"], shapes["fc"]["units"]) == ("vector", 12)


def test_an_unknown_model_is_a_404_naming_the_known_ones(http: httpx.Client) -> None:
    response = http.get("/v1/models/nope/layers")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "shapes" in response.json()["detail"]
