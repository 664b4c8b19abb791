"""Raw activations of feature maps as .npy and safetensors, with values computed by hand."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import safetensors.numpy

from tests.api.test_feature_maps import GREY, png

URL = "/v1/models/tiny/feature-maps"
IMAGE = base64.b64encode(png(GREY)).decode("ascii")
X = GREY.astype(np.float32) / 255  # what the 1×1 conv sees (mean 0, std 1)


def test_one_layer_as_npy_is_the_float_activation(http: httpx.Client) -> None:
    answer = http.post(URL, params={"format": "npy"}, json={"image": IMAGE, "layers": ["conv"]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(answer.content), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (3, 8, 8)
    # conv: x, 1 - x, 2x; negative values kept (not a 255-level picture).
    np.testing.assert_allclose(array, np.stack([X, 1 - X, 2 * X]), rtol=0, atol=1e-6)
    by_accept = http.post(
        URL, headers={"Accept": "application/x-npy"}, json={"image": IMAGE, "layers": ["conv"]}
    )
    assert by_accept.content == answer.content


def test_several_layers_as_safetensors_with_chosen_channels(http: httpx.Client) -> None:
    answer = http.post(
        URL,
        params={"format": "safetensors"},
        json={"image": IMAGE, "layers": ["conv", "relu"], "channels": [2, 0]},
    )
    assert answer.status_code == 200, answer.text
    arrays = safetensors.numpy.load(answer.content)
    assert sorted(arrays) == ["conv", "relu"]
    np.testing.assert_allclose(arrays["relu"], np.stack([2 * X, X]), rtol=0, atol=1e-6)
    assert arrays["conv"].dtype == np.float32


def test_raw_answers_name_what_is_wrong(http: httpx.Client) -> None:
    two = http.post(
        URL, params={"format": "npy"}, json={"image": IMAGE, "layers": ["conv", "relu"]}
    )
    assert two.status_code == 406
    assert "safetensors" in two.json()["detail"]
    bad = http.post(URL, params={"format": "csv"}, json={"image": IMAGE, "layers": ["conv"]})
    assert bad.status_code == 422
    out_of_range = http.post(
        URL, params={"format": "npy"}, json={"image": IMAGE, "layers": ["conv"], "channels": [5]}
    )
    assert out_of_range.status_code == 422
    assert "3 channels" in out_of_range.json()["detail"]
