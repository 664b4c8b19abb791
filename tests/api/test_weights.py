"""GET /v1/models/{model}/layers/{layer}/weights over HTTP: both answers, exact numbers, 4xx."""

from __future__ import annotations

import base64
import inspect
import io

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from cnnviz.weights import filter_weights
from schemas.weights import WeightsQuery
from service.routers.weights import _LAYERS
from tests.api.test_bad_input import problem


def decode(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.array(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_the_tiny_models_kernels_are_its_hand_set_weights(http: httpx.Client) -> None:
    response = http.get("/v1/models/tiny/layers/conv/weights", params={"scale": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["weight_shape"] == [3, 1, 1, 1] and body["kind"] == "Conv2d"
    assert body["mode"] == "slices" and body["groups"] == 1
    assert body["values"] == [[[1.0]], [[-1.0]], [[2.0]]]
    assert body["grid"] == {
        "rows": 2,
        "columns": 2,
        "tile": [2, 2],
        "padding": 1,
        "filters": [0, 1, 2],
        "input_channels": [0, 0, 0],
    }
    assert [s["norm"] for s in body["stats"]] == [1.0, 1.0, 2.0]
    image = decode(body["image"])
    assert image.shape == (7, 7, 3)
    assert (image[5:7, 4:6] == 255).all()  # no fourth tile: padding


def test_the_first_conv_of_shapes_as_json_and_as_png(http: httpx.Client) -> None:
    url = "/v1/models/shapes/layers/block1.conv/weights"
    body = http.get(url).json()
    assert body["mode"] == "rgb" and body["weight_shape"] == [16, 3, 3, 3]
    assert np.array(body["values"]).shape == (16, 3, 3, 3)
    response = http.get(url, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-weight-mode"] == "rgb"
    assert response.headers["x-grid-filters"] == ",".join(map(str, range(16)))
    assert np.array_equal(decode(response.content), decode(body["image"]))


def test_slices_of_a_deeper_conv_carry_their_input_channels(http: httpx.Client) -> None:
    response = http.get(
        "/v1/models/shapes/layers/block3.conv/weights",
        params={"mode": "slices", "k": 3, "filters": [5, 1], "colormap": "RdBu_r"},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-grid-filters"] == "5,5,5,1,1,1"
    channels = [int(c) for c in response.headers["x-grid-input-channels"].split(",")]
    assert len(channels) == 6 and all(0 <= c < 32 for c in channels)


@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_the_docs_examples_answer(http: httpx.Client, name: str) -> None:
    layer = _LAYERS[name]["value"]
    assert http.get(f"/v1/models/shapes/layers/{layer}/weights").status_code == 200


def test_openapi_declares_the_endpoint(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/v1/models/{model}/layers/{layer}/weights"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"layer", "mode", "k", "filters", "top_k", "colormap", "scale"} <= names
    assert {"200", "404", "422"} <= set(operation["responses"])


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "named"),
    [
        ("shapes/layers/fc/weights", {}, 422, "no_kernel", "'block4.conv'"),
        ("shapes/layers/block2/weights", {}, 422, "no_kernel", "'block2.conv'"),
        ("shapes/layers/block2.cnv/weights", {}, 422, "unknown_layer", "'block2.conv'"),
        ("nope/layers/conv/weights", {}, 404, "unknown_model", "shapes"),
        ("shapes/layers/block2.conv/weights", {"mode": "rgb"}, 422, "invalid_argument", "'norm'"),
        ("shapes/layers/block2.conv/weights", {"mode": "x"}, 422, "invalid_request", "'slices'"),
        ("shapes/layers/block2.conv/weights", {"filters": 32}, 422, "invalid_argument", "0..31"),
        ("shapes/layers/block2.conv/weights", {"filters": -1}, 422, "invalid_argument", "-1"),
        ("shapes/layers/block2.conv/weights", {"k": 0}, 422, "invalid_request", "k"),
        ("shapes/layers/block2.conv/weights", {"top_k": "a"}, 422, "invalid_request", "top_k"),
        (
            "shapes/layers/block2.conv/weights",
            {"filters": 1, "top_k": 2},
            422,
            "invalid_request",
            "not both",
        ),
        (
            "shapes/layers/block2.conv/weights",
            {"colormap": "nope"},
            422,
            "invalid_argument",
            "nope",
        ),
        ("shapes/layers/block2.conv/weights", {"colour": "red"}, 422, "invalid_request", "colour"),
        ("tiny/layers/relu/weights", {}, 422, "no_kernel", "'conv'"),
    ],
)
def test_bad_requests_are_clear_4xx(
    http: httpx.Client,
    path: str,
    params: dict[str, object],
    status: int,
    code: str,
    named: str,
) -> None:
    body = problem(http.get(f"/v1/models/{path}", params=params), status, code)  # type: ignore[arg-type]
    assert named in body["detail"]


def test_an_unacceptable_accept_is_406(http: httpx.Client) -> None:
    response = http.get(
        "/v1/models/shapes/layers/block1.conv/weights", headers={"Accept": "text/html"}
    )
    problem(response, 406, "not_acceptable")


def test_every_query_field_is_an_option_of_the_core() -> None:
    """The service hands the query to filter_weights field by field, by name: a query field
    the core does not take would be a 500, not a drawing."""
    options = inspect.signature(filter_weights).parameters
    assert set(WeightsQuery.model_fields) <= {
        name for name, p in options.items() if p.kind == p.KEYWORD_ONLY
    }
