"""A model registered through the API reaches a Celery worker in another process, which was
running before the registration and is never restarted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.main import create_app
from tests.api.test_register import resnet18, weights_of
from tests.jobs.client import wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ADMIN = {"X-API-Key": "admin-key"}
SPEC = {"arch": "resnet18", "input_size": [32, 32], "kwargs": {"num_classes": 10}}
JOB = {"layer": "layer2", "channels": [0], "steps": 6, "image_size": 32, "seed": 3}


@pytest.fixture
def worker(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[CeleryWorker]:
    env = {"CNNVIZ_MODEL_STORE": str(tmp_path / "store"), "CNNVIZ_MODELS_POLL_INTERVAL": "0"}
    started = CeleryWorker(fresh_redis.url, tmp_path, env).start()
    yield started
    started.stop()


def register(api: httpx.Client, data: bytes) -> dict[str, Any]:
    answer = api.put(
        "/v1/models/r18",
        data={"spec": json.dumps(SPEC)},
        files={"weights": ("w.safetensors", data)},
        headers=ADMIN,
    )
    assert answer.status_code in (200, 201), answer.text
    body: dict[str, Any] = answer.json()
    return body


def run(api: httpx.Client, model: str = "r18", job: dict[str, Any] = JOB) -> dict[str, Any]:
    submitted = api.post(
        f"/v1/models/{model}/optimizations", json=job, headers={"Cache-Control": "no-cache"}
    )
    assert submitted.status_code == 202, submitted.text
    return wait_job(api, submitted.json()["id"], {"succeeded"}, timeout=120)


def test_a_worker_uses_a_model_registered_after_it_started(
    worker: CeleryWorker, tmp_path: Path
) -> None:
    settings = api_settings(
        worker.redis_url,
        admin_keys="admin-key",
        model_store=tmp_path / "store",
        models_poll_interval=0,
    )
    with serve(create_app(settings)) as api:
        # A first job makes the pool child build its registry before any registration.
        run(api, "shapes", {**JOB, "layer": "block2.relu"})
        first = weights_of(resnet18(1))
        register(api, first)
        done = run(api)
        assert done["weights_sha256"] == hashlib.sha256(first).hexdigest()
        # Replaced: the worker runs the new weights (it would fail the job as model_changed
        # if it still had the old ones), and their result differs.
        second = weights_of(resnet18(2))
        register(api, second)
        again = run(api)
        assert again["weights_sha256"] == hashlib.sha256(second).hexdigest()
        assert again["result"]["units"][0]["objective"] != done["result"]["units"][0]["objective"]
        assert "model_changed" not in worker.log(None)
