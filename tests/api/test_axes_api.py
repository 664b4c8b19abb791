"""Axes over HTTP: the layer list says them, every endpoint reads units through them, and a
layer without usable axes is refused at submit (never accepted and failed later).

The models are the hand-built nets of tests/core/axes_nets.py, registered as factories.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.main import create_app
from tests.api.conftest import KEEP_ALIVE, REQUEST_TIMEOUT, make_settings, serve
from tests.jobs.datasets import write_image_folder
from tests.models_files import toml_table, toml_tables


def net(factory: str, **fields: object) -> dict[str, object]:
    """A models-file entry of the net ``factory`` of tests/core/axes_nets.py, random weights,
    at 16×16, with ``fields``."""
    return {
        "factory": f"tests.core.axes_nets:{factory}",
        "weights": "random",
        "input_size": [16, 16],
        **fields,
    }


MODELS = {
    "vit": net("tiny_vit"),
    "convnext": net("tiny_convnext"),
    "odd": net("odd_permute"),
    "odd_declared": net("odd_permute", axes={"perm*": "HWC"}),
    "misdeclared": net(
        "token_net", axes={"embed": {"axes": "tokens", "token_grid": [3, 3], "prefix_tokens": 1}}
    ),
    "tokens": net("token_net", axes={"pat*": "CHW"}),
}


def write_models(path: Path, root: Path, **more: dict[str, object]) -> Path:
    """``path``, written: the models of MODELS and ``more``, and the data set ``few`` at
    ``root``."""
    text = toml_tables("models", {**MODELS, **more}) + toml_table("datasets.few", path=str(root))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    work = tmp_path_factory.mktemp("axes")
    root = write_image_folder(work / "images", n=12)
    models = write_models(work / "models.toml", root)
    app = create_app(make_settings(models, exemplar_shard_images=100))
    with (
        serve(app) as url,
        httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT, limits=KEEP_ALIVE) as client,
    ):
        yield client


def image() -> str:
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def layers(http: httpx.Client, model: str) -> dict[str, dict[str, Any]]:
    response = http.get(f"/v1/models/{model}/layers")
    assert response.status_code == 200, response.text
    return {layer["name"]: layer for layer in response.json()["layers"]}


def refused(response: httpx.Response, code: str, *words: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["detail"], body["detail"]


def wait(http: httpx.Client, location: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = http.get(location).json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"{location} did not finish")


def test_the_layer_list_gives_axes_units_grid_and_prefix(http: httpx.Client) -> None:
    vit = layers(http, "vit")
    assert vit["blocks.0.mlp.fc1"] == {
        "name": "blocks.0.mlp.fc1",
        "kind": "Linear",
        "shape": [17, 10],
        "axes": "tokens",
        "units": 10,
        "token_grid": [4, 4],
        "prefix_tokens": 1,
        "features_first": False,
        "axes_note": None,
    }
    assert "blocks.0.attn.permute" not in vit  # (3, B, heads, N, d)
    assert vit["blocks.0.attn.softmax"]["axes"] is None
    assert vit["blocks.0.attn.softmax"]["axes_note"]
    convnext = layers(http, "convnext")
    assert (convnext["fc1"]["axes"], convnext["fc1"]["units"]) == ("HWC", 10)
    assert "reshape" not in convnext  # gamma.reshape(1, -1, 1, 1)
    assert layers(http, "odd_declared")["permute"]["axes"] == "HWC"


def test_feature_maps_of_a_tokens_layer_are_unit_first(http: httpx.Client) -> None:
    body = {"image": image(), "layers": ["blocks.1.mlp.fc1"]}
    response = http.post("/v1/models/vit/feature-maps", json=body)
    assert response.status_code == 200, response.text
    (layer,) = response.json()["layers"]
    assert layer["shape"] == [10, 4, 4]
    assert layer["grid"]["channels"] == list(range(10))
    hwc = http.post("/v1/models/convnext/feature-maps", json={**body, "layers": ["fc1"]})
    assert hwc.status_code == 200 and hwc.json()["layers"][0]["shape"] == [10, 4, 4]


def test_ambiguous_and_unlisted_layers_are_refused_with_the_way_out(http: httpx.Client) -> None:
    body = {"image": image(), "layers": ["permute"]}
    refused(
        http.post("/v1/models/odd/feature-maps", json=body),
        "ambiguous_axes",
        "ambiguous",
        "(0, 3, 2, 1)",
        "axes = ",
    )
    declared = http.post("/v1/models/odd_declared/feature-maps", json=body)
    assert declared.status_code == 200 and declared.json()["layers"][0]["shape"] == [4, 4, 4]
    refused(
        http.post("/v1/models/convnext/feature-maps", json={**body, "layers": ["reshape"]}),
        "unsupported_layer",
        "first axis is the batch",
    )


def test_jobs_naming_a_layer_without_usable_axes_are_refused_at_submit(
    http: httpx.Client,
) -> None:
    optimization = {"layer": "permute", "channels": [0], "steps": 2}
    refused(http.post("/v1/models/odd/optimizations", json=optimization), "ambiguous_axes")
    refused(
        http.post(
            "/v1/models/vit/optimizations", json={**optimization, "layer": "blocks.0.attn.permute"}
        ),
        "unsupported_layer",
    )
    exemplars = {"dataset": "few", "layers": ["permute"], "k": 2}
    refused(http.post("/v1/models/odd/exemplars", json=exemplars), "ambiguous_axes")
    dissection = {"dataset": "few", "layers": ["permute"], "method": "labels", "k": 2}
    refused(http.post("/v1/models/odd/dissections", json=dissection), "ambiguous_axes")
    # A declaration that does not fit the layer (3×3 ≠ 16 tokens) leaves it ambiguous.
    cam = {"image": image(), "method": "gradcam", "layer": "embed"}
    refused(
        http.post("/v1/models/misdeclared/attribution-jobs", json=cam),
        "ambiguous_axes",
        "token_grid",
    )
    refused(http.post("/v1/models/misdeclared/attributions", json=cam), "ambiguous_axes")


def test_jobs_on_a_tokens_layer_use_its_features_and_grid(http: httpx.Client) -> None:
    submitted = http.post(
        "/v1/models/tokens/exemplars", json={"dataset": "few", "layers": ["embed"], "k": 2}
    )
    assert submitted.status_code == 202, submitted.text
    record = wait(http, submitted.headers["Location"])
    assert record["status"] == "succeeded", record
    (layer,) = record["result"]["layers"]
    assert layer["shape"] == [3, 4, 4] and len(layer["units"]) == 3  # features, not tokens
    for unit in layer["units"]:
        for exemplar in unit["top"]:
            assert all(0 <= v < 4 for v in exemplar["position"])
    for mode in ("mask", "crop"):  # in the token grid, through the receptive field
        picture = http.get(f"/v1/jobs/{record['id']}/exemplars/embed/0", params={"mode": mode})
        assert picture.status_code == 200, picture.text
    dissected = http.post(
        "/v1/models/tokens/dissections",
        json={"dataset": "few", "layers": ["embed"], "method": "labels", "k": 2},
    )
    assert dissected.status_code == 202, dissected.text
    record = wait(http, dissected.headers["Location"])
    assert record["status"] == "succeeded", record
    (layer,) = record["result"]["layers"]
    assert layer["shape"] == [3, 4, 4] and len(layer["units"]) == 3  # features, not tokens
    optimized = http.post(
        "/v1/models/vit/optimizations",
        json={"layer": "blocks.0.mlp.fc1", "channels": [3], "steps": 4, "image_size": 16},
    )
    assert optimized.status_code == 202, optimized.text
    record = wait(http, optimized.headers["Location"])
    assert record["status"] == "succeeded", record
    cam = http.post(
        "/v1/models/vit/attributions",
        json={"image": image(), "method": "gradcam", "layer": "blocks.1"},
    )
    assert cam.status_code == 200, cam.text


def test_a_bad_axes_table_keeps_the_other_models(tmp_path: Path) -> None:
    bad = {"factory": "x.y:z", "weights": "random", "axes": {"a": "NCHW"}}
    models = write_models(tmp_path / "models.toml", tmp_path, bad=bad)
    from cnnviz.models import ModelRegistry

    registry = ModelRegistry.from_file(models)
    assert "axes must be one of" in registry.errors["bad"]
    assert registry.spec("odd_declared").axes["perm*"].axes == "HWC"
