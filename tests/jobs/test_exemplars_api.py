"""Exemplar jobs over HTTP, on both transports, and sharded over real Celery workers."""

from __future__ import annotations

import base64
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.main import create_app
from tests.jobs.client import job, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.datasets import SMALL, SMALL_IMAGES, assert_same_exemplars
from tests.jobs.procs import CeleryWorker, RedisServer, serve

BODY = {"dataset": SMALL, "layers": ["block2.relu", "fc"], "k": 6, "bottom": True}
# A lost worker's leases lapse within seconds (Celery's visibility timeout: the default hour).
LEASE_SOON = {"CNNVIZ_JOB_LEASE_INTERVAL": "0.5", "CNNVIZ_JOB_LEASE_TIMEOUT": "3"}


def run(api: httpx.Client, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    response = api.post(
        "/v1/models/shapes/exemplars", json=body, headers={"Cache-Control": "no-cache"}
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{created['id']}"
    assert created["kind"] == "exemplar"
    done = wait_job(api, created["id"], timeout=timeout)
    assert done["status"] == "succeeded", done["error"]
    return done


def test_exemplars_through_the_api(api: httpx.Client) -> None:
    listed = {d["name"]: d for d in api.get("/v1/datasets").json()["datasets"]}
    assert listed[SMALL]["images"] == SMALL_IMAGES + 1
    assert len(listed[SMALL]["labels"]) == 12 and listed["shapes"]["builtin"]

    done = run(api, BODY)
    result = done["result"]
    assert (result["images"], result["skipped"], result["shards"]) == (SMALL_IMAGES, 1, 3)
    assert done["progress"] == {**done["progress"], "step": SMALL_IMAGES + 1, "unit": "images"}
    conv, fc = result["layers"]
    assert conv["shape"] == [32, 32, 32] and len(conv["units"]) == 32 and fc["shape"] == [12]
    unit = conv["units"][3]
    assert len(unit["top"]) == len(unit["bottom"]) == 6
    assert unit["top"][0]["score"] >= unit["top"][-1]["score"] >= unit["bottom"][-1]["score"]
    # The time the shards and the merge took, not the merge's alone.
    ran = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    assert 0.5 * ran.total_seconds() <= result["elapsed_s"] <= ran.total_seconds() + 1.0

    path = f"/v1/jobs/{done['id']}/exemplars/block2.relu/3"
    for mode in ("full", "crop", "mask"):
        png = api.get(path, params={"mode": mode}, headers={"Accept": "image/png"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (6 * 64 + 7 * 2, 64 + 2 * 2)
    drawn = api.get(path, params={"which": "bottom", "mode": "crop"}).json()
    assert drawn["images"] == [e["image"] for e in unit["bottom"]]
    assert Image.open(io.BytesIO(base64.b64decode(drawn["png"]))).format == "PNG"

    image = api.get(f"/v1/datasets/{SMALL}/images/{unit['top'][0]['image']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        (
            "post",
            "/v1/models/shapes/exemplars",
            {**BODY, "dataset": "nope"},
            404,
            "unknown_dataset",
        ),
        (
            "post",
            "/v1/models/shapes/exemplars",
            {**BODY, "layers": ["block9"]},
            422,
            "unknown_layer",
        ),
        ("post", "/v1/models/shapes/exemplars", {**BODY, "k": 101}, 422, "invalid_request"),
        ("post", "/v1/models/shapes/exemplars", {**BODY, "pool": "median"}, 422, "invalid_request"),
        (
            "get",
            f"/v1/datasets/{SMALL}/images/circle/..%2F..%2Foutside.png",
            None,
            404,
            "unknown_image",
        ),
        ("get", f"/v1/datasets/{SMALL}/images/circle/escape.png", None, 404, "unknown_image"),
        ("get", "/v1/datasets/nope/images/x.png", None, 404, "unknown_dataset"),
        ("get", "/v1/jobs/nope/exemplars/fc/0", None, 404, "unknown_job"),
    ],
)
def test_bad_inputs_are_clear_4xx(
    api: httpx.Client, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = api.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["content-type"] == "application/problem+json"


def test_renders_name_what_is_wrong(api: httpx.Client) -> None:
    done = run(api, {"dataset": SMALL, "layers": ["fc"], "k": 2})
    base = f"/v1/jobs/{done['id']}/exemplars"
    assert "did you mean 'fc'" in api.get(f"{base}/block2.relu/0").json()["detail"]
    assert "12 channels (0..11)" in api.get(f"{base}/fc/12").json()["detail"]
    assert '"bottom": true' in api.get(f"{base}/fc/0", params={"which": "bottom"}).json()["detail"]
    assert api.get(f"{base}/fc/0", params={"mode": "blur"}).status_code == 422


@pytest.mark.redis
@pytest.mark.slow
def test_two_celery_workers_and_five_shards_give_the_in_process_result(
    fresh_redis: RedisServer, tmp_path: Path, models_file: Path
) -> None:
    env = {
        "CNNVIZ_MODELS_FILE": str(models_file),
        "CNNVIZ_EXEMPLAR_SHARD_IMAGES": "50",
        # DataLoader processes inside the prefork pool child: the real worker command.
        "CNNVIZ_EXEMPLAR_LOADER_WORKERS": "2",
    }
    workers = [CeleryWorker(fresh_redis.url, tmp_path, env).start() for _ in range(2)]
    try:
        with serve(create_app(api_settings(fresh_redis.url, models_file=models_file))) as api:
            sharded = run(api, BODY)["result"]
        with serve(create_app(api_settings(None, models_file=models_file))) as api:
            single = run(api, BODY)["result"]
        assert (sharded["shards"], single["shards"]) == (5, 1)
        assert_same_exemplars(sharded, single)
        shard_runs = sum(w.log(tail=None).count("cnnviz.job.shard[") for w in workers)
        assert shard_runs >= 5 * 2  # each shard's task received and succeeded
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.redis
@pytest.mark.slow
def test_a_killed_shard_worker_still_gives_the_full_result(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """The whole worker lost mid-shard: the lost shard's lease lapses, the API's sweeper
    sends that shard again, and the shards done before are not run again."""
    body = {"dataset": "shapes", "layers": ["block3.relu"], "k": 4}
    env = {
        **LEASE_SOON,
        "CNNVIZ_EXEMPLAR_SHARD_IMAGES": "300",
        "CNNVIZ_EXEMPLAR_BATCH_SIZE": "16",
    }
    first = CeleryWorker(fresh_redis.url, tmp_path, env).start()
    second = CeleryWorker(fresh_redis.url, tmp_path, env)
    try:
        settings = api_settings(fresh_redis.url, lease_sweep_interval=0.5)
        with serve(create_app(settings)) as api:
            response = api.post("/v1/models/shapes/exemplars", json=body)
            job_id = response.json()["id"]
            wait_job(api, job_id, {"running"}, step=700)  # two shards of 300 done, a third runs
            first.kill()  # the whole worker, parent and pool child, mid-shard
            assert job(api, job_id)["status"] == "running"
            second.start()
            done = wait_job(api, job_id, timeout=180)
            assert done["status"] == "succeeded", done["error"]
            assert done["progress"]["step"] == done["result"]["images"] == 2400
            ran = len(re.findall(r"Task cnnviz\.job\.shard\[\S+\] received", second.log(tail=None)))
            assert 0 < ran <= 6  # of 8 shards: the two kept before the kill did not run again
        with serve(create_app(api_settings(None))) as api:
            single = run(api, body)["result"]
        assert_same_exemplars(done["result"], single)
    finally:
        first.stop()
        second.stop()
