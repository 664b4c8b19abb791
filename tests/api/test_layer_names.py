"""Over HTTP, a layer name is the module of that name: ``conv1_1`` is never ``conv1_2``."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image


def grey_png(level: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), level, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_layers_of_a_model_with_underscore_digit_names(http: httpx.Client) -> None:
    body = http.get("/v1/models/caffe/layers").json()
    assert [(layer["name"], layer["shape"]) for layer in body["layers"]] == [
        ("conv1_1", [2, 8, 8]),
        ("relu", [2, 8, 8]),
        ("conv1_2", [3, 8, 8]),
        ("relu:1", [3, 8, 8]),
    ]


@pytest.mark.parametrize(
    ("layer", "means"),
    [
        # grey g = 0.2: conv1_1 = (g, 1 - g); conv1_2 = (2g, 3(1 - g), g + (1 - g))
        ("conv1_1", [0.2, 0.8]),
        ("relu", [0.2, 0.8]),
        ("conv1_2", [0.4, 2.4, 1.0]),
        ("relu:1", [0.4, 2.4, 1.0]),
    ],
)
def test_each_name_gives_its_own_modules_activations(
    http: httpx.Client, layer: str, means: list[float]
) -> None:
    response = http.post(
        "/v1/models/caffe/feature-maps", json={"image": grey_png(51), "layers": [layer]}
    )
    assert response.status_code == 200, response.text
    [maps] = response.json()["layers"]
    assert maps["name"] == layer
    assert [stat["mean"] for stat in maps["stats"]] == pytest.approx(means, abs=1e-5)


def test_the_old_renamed_spelling_is_refused(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/caffe/feature-maps", json={"image": grey_png(51), "layers": ["conv1"]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_layer"
