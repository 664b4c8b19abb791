"""Faults, against real Redis servers and real Celery worker processes.

A pool child killed, Redis going away and coming back, a job past its time limit, twenty
jobs at once: no job is lost, none runs twice to two results, and the service says clearly
what is wrong while it is wrong. (A whole worker group killed, Redis restarted or paused
mid-job: the fault matrix, tests/faults.)
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from service.main import create_app
from tests.jobs.client import LONG, MODEL, QUICK, job, submit, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# Limits short enough to see within a test, in the order the worker insists on:
# soft < hard < visibility timeout. A lost worker's job comes back after 10 s, and may run
# for 8 s then (MEDIUM takes one or two on a quiet core).
REDELIVER_SOON = {
    "CNNVIZ_JOB_SOFT_TIME_LIMIT": "8",
    "CNNVIZ_JOB_TIME_LIMIT": "9",
    "CNNVIZ_BROKER_VISIBILITY_TIMEOUT": "10",
    "CNNVIZ_BROKER_RESTORE_INTERVAL": "0.5",
}
# LONG takes tens of seconds: it cannot finish inside 3.
TIME_OUT_SOON = {
    "CNNVIZ_JOB_SOFT_TIME_LIMIT": "3",
    "CNNVIZ_JOB_TIME_LIMIT": "5",
    "CNNVIZ_BROKER_VISIBILITY_TIMEOUT": "6",
}
# Long enough to be caught mid-run, short enough to run again inside the soft limit.
MEDIUM = {"layer": "block3.relu", "channels": [2], "steps": 200, "image_size": 64}


def _runs_logged(worker: CeleryWorker, job_id: str) -> int:
    """How many runs of this job the worker logged as having written the result.

    The task returns, and Celery logs, just after the record is written: wait for the line.
    The task's id is the job's, or the job's and ``~N`` for the N-th send by the sweeper.
    """
    task = re.compile(rf"\[{re.escape(job_id)}(~\d+)?\] succeeded")

    def lines() -> list[str]:
        return [
            line
            for line in worker.log(tail=None).splitlines()
            if task.search(line) and "'status': 'succeeded'" in line
        ]

    return len(wait_for(lines, 10, f"the worker to log job {job_id}"))


def test_a_killed_pool_child_gives_its_job_back_at_once(shared_worker: CeleryWorker) -> None:
    with serve(create_app(api_settings(shared_worker.redis_url))) as api:
        created = submit(api, MEDIUM)
        wait_job(api, created["id"], {"running"}, step=10)
        (child,) = shared_worker.pool_children()
        os.kill(child, signal.SIGKILL)  # the OOM killer's way

        done = wait_job(api, created["id"], timeout=60)

        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 2
        assert shared_worker.alive
        assert _runs_logged(shared_worker, created["id"]) == 1


def test_a_job_past_its_time_limit_fails_and_the_worker_lives_on(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    worker = CeleryWorker(fresh_redis.url, tmp_path, TIME_OUT_SOON).start()
    try:
        with serve(create_app(api_settings(fresh_redis.url))) as api:
            started = time.monotonic()
            failed = wait_job(api, submit(api, LONG)["id"], timeout=30)

            assert failed["status"] == "failed"
            assert failed["error"]["code"] == "timeout"
            assert "time limit" in failed["error"]["message"]
            assert failed["progress"]["step"] < 4096
            assert time.monotonic() - started < 20

            after = wait_job(api, submit(api, QUICK)["id"])
            assert after["status"] == "succeeded"
            assert worker.alive
            assert worker.pool_children()
    finally:
        worker.stop()


def _tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_without_redis_submitting_is_a_clear_503_and_the_service_recovers(
    tmp_path: Path,
) -> None:
    redis_server = RedisServer(tmp_path, persistent=True).start()
    worker = CeleryWorker(redis_server.url, tmp_path).start()
    try:
        with serve(create_app(api_settings(redis_server.url))) as api:
            before = wait_job(api, submit(api, QUICK)["id"])
            assert before["status"] == "succeeded"

            redis_server.stop()

            started = time.monotonic()
            refused = api.post(f"/v1/models/{MODEL}/optimizations", json=QUICK)
            assert time.monotonic() - started < 10
            assert refused.status_code == 503
            problem = refused.json()
            assert problem["code"] == "queue_unavailable"
            assert "unavailable" in problem["detail"]
            assert "feature maps still work" in problem["detail"]
            assert refused.headers["Retry-After"]
            assert api.get(f"/v1/jobs/{before['id']}").status_code == 503

            ready = api.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["queue"]["ok"] is False

            # The synchronous path needs no Redis.
            maps = api.post(
                f"/v1/models/{MODEL}/feature-maps",
                json={"image": _tiny_png(), "layers": ["block1.conv"]},
            )
            assert maps.status_code == 200, maps.text
            assert api.get(f"/v1/models/{MODEL}/layers").status_code == 200

            redis_server.start()  # same port, same data

            def accepted() -> bool:
                response = api.post(
                    f"/v1/models/{MODEL}/optimizations",
                    json=QUICK,
                    headers={"Cache-Control": "no-cache"},
                )
                return response.status_code == 202 and bool(response.json()["id"])

            wait_for(accepted, 30, "the API to accept jobs again", interval=0.2)
            after = wait_job(api, submit(api, QUICK)["id"], timeout=60)
            assert after["status"] == "succeeded"
            assert job(api, before["id"])["status"] == "succeeded"
            wait_for(lambda: api.get("/readyz").json()["checks"]["queue"]["ok"], 10, "queue ready")
    finally:
        worker.stop()
        redis_server.stop()


def test_twenty_jobs_at_once_all_succeed_once(shared_worker: CeleryWorker) -> None:
    with serve(create_app(api_settings(shared_worker.redis_url))) as api:
        bodies = [{**QUICK, "steps": 12, "seed": seed} for seed in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            created = list(pool.map(lambda body: submit(api, body), bodies))
        ids = [c["id"] for c in created]
        assert len(set(ids)) == 20

        done = [wait_job(api, job_id, timeout=120) for job_id in ids]

        assert [d["status"] for d in done] == ["succeeded"] * 20
        assert [d["attempts"] for d in done] == [1] * 20
        assert [d["result"]["seed"] for d in done] == list(range(20))
        for job_id in ids:
            assert _runs_logged(shared_worker, job_id) == 1


def test_readiness_counts_the_workers_on_the_queue(shared_worker: CeleryWorker) -> None:
    with serve(create_app(api_settings(shared_worker.redis_url))) as api:
        response = api.get("/readyz")
        checks = response.json()["checks"]
        assert checks["queue"]["ok"] is True
        assert checks["workers"]["ok"] is True
        assert checks["workers"]["consumers"] >= 1
        assert response.status_code == 200, checks


def test_readiness_says_why_when_no_worker_listens(fresh_redis: RedisServer) -> None:
    with serve(create_app(api_settings(fresh_redis.url))) as api:
        response = api.get("/readyz")
        assert response.status_code == 503
        workers = response.json()["checks"]["workers"]
        assert workers["ok"] is False
        assert workers["consumers"] == 0
        assert "no worker consumes the 'gpu' queue" in workers["reason"]
        assert "celery -A workers.app worker -Q gpu" in workers["reason"]
        # This Redis keeps nothing on disk: a restart would lose the queue, and /readyz says so.
        queue = response.json()["checks"]["queue"]
        assert queue["ok"] is True
        assert queue["appendonly"] == "no"
        assert "restart loses queued jobs" in queue["warning"]


def test_in_process_jobs_are_always_ready() -> None:
    with serve(create_app(api_settings(None))) as api:
        checks = api.get("/readyz").json()["checks"]
        assert checks["jobs"]["ok"] is True
        assert checks["jobs"]["transport"] == "in-process"
