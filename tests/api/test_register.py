"""PUT and DELETE /v1/models/{name}: models registered at run time, over HTTP.

A resnet18 with random weights made here is registered, and its feature maps are compared
with torchvision's own forward pass on the same weights, computed here independently.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy
import torch
import torchvision
from PIL import Image
from safetensors.torch import save as save_safetensors

from service.main import create_app
from tests.api.conftest import KEEP_ALIVE, REQUEST_TIMEOUT, make_settings, serve
from tests.jobs.client import LONG, wait_job

ADMIN = {"X-API-Key": "admin-key"}
USER = {"X-API-Key": "user-key"}
MEAN = [0.4, 0.5, 0.6]
STD = [0.2, 0.25, 0.3]
SPEC = {
    "arch": "resnet18",
    "input_size": [64, 64],
    "mean": MEAN,
    "std": STD,
    "kwargs": {"num_classes": 10},
    "labels": [f"class{i}" for i in range(10)],
}


def resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    # Random batch-norm statistics too, so that a wrong or missing tensor shows.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def weights_of(model: torch.nn.Module) -> bytes:
    return save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})


def put(
    http: httpx.Client,
    name: str,
    weights: bytes,
    spec: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return http.put(
        f"/v1/models/{name}",
        data={"spec": json.dumps(spec if spec is not None else SPEC)},
        files={"weights": ("weights.safetensors", weights, "application/octet-stream")},
        headers=ADMIN if headers is None else headers,
    )


@dataclass(frozen=True)
class Seeded:
    """A resnet18 with random weights, and those weights as a safetensors file's bytes."""

    model: torch.nn.Module
    weights: bytes


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    model = resnet18(3)
    return Seeded(model, weights_of(model))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def http(models_file: Path, store: Path) -> Iterator[httpx.Client]:
    settings = make_settings(
        models_file,
        api_keys="user-key",
        admin_keys="admin-key",
        model_store=store,
        models_poll_interval=0,
        model_upload_max_bytes=60 * 1024 * 1024,
    )
    with (
        serve(create_app(settings)) as url,
        httpx.Client(
            base_url=url, timeout=REQUEST_TIMEOUT, limits=KEEP_ALIVE, headers=USER
        ) as client,
    ):
        yield client


def test_a_registered_resnet18_answers_torchvisions_feature_maps(
    http: httpx.Client, seeded: Seeded, store: Path
) -> None:
    data = seeded.weights
    answer = put(http, "r18", data)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    sha256 = hashlib.sha256(data).hexdigest()
    assert body["sha256"] == sha256 and body["origin"] == "store"
    assert (store / "weights" / f"{sha256}.safetensors").read_bytes() == data
    listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert listed["r18"]["source"] == "resnet18" and listed["r18"]["sha256"] == sha256

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    maps = http.post(
        "/v1/models/r18/feature-maps",
        params={"format": "safetensors"},
        json={
            "image": base64.b64encode(buffer.getvalue()).decode(),
            "layers": ["layer1", "layer3.1.bn2", "fc"],
        },
    )
    assert maps.status_code == 200, maps.text
    arrays = safetensors.numpy.load(maps.content)

    # Independently: torchvision's resnet18 with the same weights, the same normalisation.
    model = seeded.model
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))[None]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        dict(model.named_modules())[name].register_forward_hook(
            # A clone: the block adds the identity and applies ReLU in place afterwards.
            lambda _m, _i, out, name=name: seen.__setitem__(name, out[0].clone())
        )
        for name in ("layer1", "layer3.1.bn2", "fc")
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    for name, expected in seen.items():
        assert arrays[name].shape == tuple(expected.shape)
        np.testing.assert_allclose(arrays[name], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_only_an_admin_key_registers(http: httpx.Client, seeded: Seeded) -> None:
    data = seeded.weights
    refused = put(http, "r18", data, headers=USER)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert put(http, "r18", data, headers={"X-API-Key": ""}).status_code == 401
    # An admin key is also an API key.
    assert http.get("/v1/models", headers=ADMIN).status_code == 200
    assert http.delete("/v1/models/r18", headers=USER).status_code == 403
    assert "r18" not in {m["name"] for m in http.get("/v1/models").json()["models"]}


def test_without_admin_keys_the_routes_are_off(models_file: Path, tmp_path: Path) -> None:
    settings = make_settings(models_file, model_store=tmp_path / "store")
    with serve(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        answer = put(client, "r18", b"x" * 100, headers={})
        assert answer.status_code == 404
        assert "CNNVIZ_ADMIN_KEYS" in answer.json()["detail"]
        assert client.delete("/v1/models/r18").status_code == 404
    assert not (tmp_path / "store").exists()


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_a_pickle_is_refused_with_the_reason_and_nothing_is_kept(
    http: httpx.Client, store: Path, seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    model = seeded.model
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    answer = put(http, "r18", saved.getvalue())
    assert answer.status_code == 422
    assert answer.json()["code"] == "invalid_model"
    assert "torch.save" in answer.json()["detail"] and "safetensors" in answer.json()["detail"]
    raw = put(http, "r18", pickle.dumps({"fc.weight": Payload()}))
    assert raw.status_code == 422 and "pickle" in raw.json()["detail"]
    assert put(http, "r18", b"not a model at all").status_code == 422
    assert "this must never run" not in capsys.readouterr().out
    assert not (store / "weights").exists() or not any((store / "weights").iterdir())


def test_weights_that_do_not_fit_are_a_422_naming_why(
    http: httpx.Client, store: Path, seeded: Seeded
) -> None:
    data = seeded.weights
    wrong_arch = put(http, "r34", data, spec={**SPEC, "arch": "resnet34"})
    assert wrong_arch.status_code == 422
    assert "Missing key" in wrong_arch.json()["detail"]
    wrong_classes = put(http, "r18", data, spec={**SPEC, "kwargs": {"num_classes": 5}})
    assert wrong_classes.status_code == 422
    assert "size mismatch" in wrong_classes.json()["detail"]
    factory = put(http, "r18", data, spec={**SPEC, "arch": None, "factory": "os:system"})
    assert factory.status_code == 422 and "'factory'" in factory.json()["detail"]
    both = put(http, "r18", data, spec={**SPEC, "timm": "resnet18"})
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    bad_key = put(http, "r18", data, spec={**SPEC, "colour": "blue"})
    assert bad_key.status_code == 422 and "colour" in bad_key.json()["detail"]
    assert put(http, "r18", data, spec="[1, 2]").status_code == 422  # type: ignore[arg-type]
    assert put(http, "bad name", data).status_code in (404, 422)
    assert not any(store.glob("*/*"))


def test_a_name_of_the_file_or_the_builtin_is_a_409(http: httpx.Client, seeded: Seeded) -> None:
    data = seeded.weights
    for name in ("shapes", "tiny"):
        answer = put(http, name, data)
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "model_name_taken"
        assert http.delete(f"/v1/models/{name}", headers=ADMIN).status_code == 409


def test_uploads_have_a_size_cap(models_file: Path, tmp_path: Path) -> None:
    settings = make_settings(
        models_file, admin_keys="admin-key", model_store=tmp_path, model_upload_max_bytes=4096
    )
    with serve(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        answer = put(client, "big", b"\0" * 10_000)
        assert answer.status_code == 413


def test_put_again_replaces_and_delete_removes(
    http: httpx.Client, store: Path, seeded: Seeded
) -> None:
    first = seeded.weights
    second = weights_of(resnet18(4))
    assert put(http, "r18", first).status_code == 201
    layers = http.get("/v1/models/r18/layers")
    assert layers.status_code == 200
    replaced = put(http, "r18", second)
    assert replaced.status_code == 200
    assert replaced.json()["sha256"] == hashlib.sha256(second).hexdigest()
    # The replaced weights are gone from the store; the new ones serve.
    assert [p.name for p in (store / "weights").iterdir()] == [
        f"{hashlib.sha256(second).hexdigest()}.safetensors"
    ]
    listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert listed["r18"]["sha256"] == hashlib.sha256(second).hexdigest()
    assert http.delete("/v1/models/r18", headers=ADMIN).status_code == 204
    assert http.get("/v1/models/r18/layers").status_code == 404
    assert not any((store / "weights").iterdir())
    assert http.delete("/v1/models/r18", headers=ADMIN).status_code == 404


def optimize(http: httpx.Client, model: str, body: dict[str, object]) -> dict[str, Any]:
    """Submit an optimization job of ``model``; asserts the 202; the job as answered."""
    response = http.post(f"/v1/models/{model}/optimizations", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_a_job_records_its_weights_and_finishes_on_them_after_deletion(
    http: httpx.Client, seeded: Seeded
) -> None:
    data = seeded.weights
    assert put(http, "r18", data).status_code == 201
    body = {"layer": "layer2", "channels": [0], "steps": 400, "image_size": 64}
    job = optimize(http, "r18", body)
    assert job["weights_sha256"] == hashlib.sha256(data).hexdigest()
    wait_job(http, job["id"], {"running"}, timeout=60, step=1)
    assert http.delete("/v1/models/r18", headers=ADMIN).status_code == 204
    assert http.get("/v1/models/r18/layers").status_code == 404
    record = wait_job(http, job["id"], timeout=120)
    assert record["status"] == "succeeded", record.get("error")
    assert record["weights_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_queued_job_never_runs_on_weights_registered_after_it(
    http: httpx.Client, seeded: Seeded
) -> None:
    first = seeded.weights
    assert put(http, "r18", first).status_code == 201
    # The one in-process job worker is kept busy, so the second job waits in the queue.
    busy = optimize(http, "shapes", LONG)
    wait_job(http, busy["id"], {"running"}, timeout=60, step=1)
    body = {"layer": "layer1", "channels": [0], "steps": 4, "image_size": 32}
    queued = optimize(http, "r18", body)
    assert queued["status"] == "queued"
    replaced = put(http, "r18", weights_of(resnet18(5)))
    assert replaced.status_code == 200, replaced.text
    cancelled = http.post(f"/v1/jobs/{busy['id']}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
    record = wait_job(http, queued["id"], timeout=120)
    assert record["status"] == "failed", record
    error = record["error"]
    assert isinstance(error, dict) and error["code"] == "model_changed"
    assert "submit the job again" in error["message"]


def test_the_client_registers_and_removes(
    http: httpx.Client, seeded: Seeded, tmp_path: Path
) -> None:
    from cnnviz_client.client import ApiError, Client

    data = seeded.weights
    (tmp_path / "r18.safetensors").write_bytes(data)
    with Client(str(http.base_url), api_key="admin-key") as admin:
        read = admin.register_model("r18", SPEC, tmp_path / "r18.safetensors")
        assert read.sha256 == hashlib.sha256(data).hexdigest() and read.origin == "store"
        assert "r18" in {m.name for m in admin.models().models}
        admin.delete_model("r18")
        with pytest.raises(ApiError) as refused:
            admin.delete_model("r18")
        assert refused.value.status == 404
