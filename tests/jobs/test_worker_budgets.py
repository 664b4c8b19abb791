"""A queued job is admitted against the device that will run it: the largest budget the live
workers of its queue publish, else CNNVIZ_WORKER_MEMORY_BUDGET_MB, and the job says which.

Planted budgets (published as a worker publishes them) for the admission; a real worker for
the heartbeat and the expiry of a dead worker's budget.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch

from cnnviz.optvis.settings import DEFAULT_MEMORY_BUDGET_MB
from schemas.jobs import JOB_QUEUE, WorkerBudget
from service.main import create_app
from tests.jobs.client import LARGE, MODEL
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for
from workers.budgets import budget_key, largest, live, publish
from workers.config import JobSettings
from workers.device import children_budget

URL = f"/v1/models/{MODEL}/optimizations"
# The same at 256 px: about 100 MiB.
MEDIUM = {**LARGE, "image_size": 256}


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis for this module alone: no other worker publishes a budget in it."""
    server = RedisServer(tmp_path_factory.mktemp("budgets")).start()
    yield server
    server.stop()


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    connection = own_redis.client()
    connection.flushdb()  # no budget, and no job queued by an earlier test
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def api(own_redis: RedisServer) -> Iterator[httpx.Client]:
    with serve(create_app(api_settings(own_redis.url, max_job_work=10**9))) as http:
        yield http


def plant(client: redis.Redis, mb: int, name: str, device: str = "cuda:0") -> None:
    budget = WorkerBudget(worker=name, device=device, memory_budget_mb=mb)
    publish(client, budget, ttl_s=60)


def post(api: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return api.post(URL, json=body, headers={"Cache-Control": "no-cache"})


def refused(api: httpx.Client, body: dict[str, Any]) -> str:
    answer = post(api, body)
    assert answer.status_code == 422, answer.text
    detail: str = answer.json()["detail"]
    return detail


def admitted(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = post(api, body)
    assert answer.status_code == 202, answer.text
    admission: dict[str, Any] = answer.json()["admission"]
    assert api.get(answer.headers["Location"]).json()["admission"] == admission  # kept
    return admission


def test_a_large_worker_budget_admits_what_the_fallback_refuses(
    api: httpx.Client, client: redis.Redis
) -> None:
    detail = refused(api, LARGE)
    assert "over the render's memory budget of 1024 MiB (CNNVIZ_WORKER_MEMORY_BUDGET_MB" in detail
    plant(client, 40960, "h200@gpu-1")
    plant(client, 20480, "l4@gpu-2")
    assert admitted(api, LARGE) == {
        "memory_budget_mb": 40960,
        "source": "worker",
        "queue": JOB_QUEUE,
        "worker": "h200@gpu-1",
        "device": "cuda:0",
    }


def test_a_small_worker_budget_refuses_what_the_fallback_admits(
    api: httpx.Client, client: redis.Redis
) -> None:
    assert admitted(api, MEDIUM) == {
        "memory_budget_mb": 1024,
        "source": "fallback",
        "queue": JOB_QUEUE,
        "worker": None,
        "device": None,
    }
    plant(client, 48, "small@cpu", device="cpu")
    detail = refused(api, MEDIUM)
    assert (
        "over the render's memory budget of 48 MiB (the largest of the live workers of "
        "queue 'gpu': small@cpu, cpu)" in detail
    )


def test_the_fallback_is_a_setting(own_redis: RedisServer, client: redis.Redis) -> None:
    settings = api_settings(own_redis.url, max_job_work=10**9, worker_memory_budget_mb=8192)
    with serve(create_app(settings)) as api:
        admission = admitted(api, LARGE)
    assert (admission["source"], admission["memory_budget_mb"]) == ("fallback", 8192)
    # Today's 1024 MiB unless set: a CPU's budget.
    assert JobSettings().worker_memory_budget_mb == DEFAULT_MEMORY_BUDGET_MB


def test_the_largest_of_the_live_budgets_counts(client: redis.Redis) -> None:
    plant(client, 1024, "b@cpu", device="cpu")
    plant(client, 35000, "a@gpu")
    publish(client, WorkerBudget(worker="gone@gpu", device="cuda:0", memory_budget_mb=9), 0.001)
    wait_for(lambda: client.get(budget_key(JOB_QUEUE, "gone@gpu")) is None, 5, "the expiry")
    budgets = live(client, JOB_QUEUE)
    assert sorted(b.worker for b in budgets) == ["a@gpu", "b@cpu"]  # the expired one is gone
    best = largest(budgets)
    assert best is not None and best.worker == "a@gpu"
    assert largest([]) is None


def cpu_worker(redis_server: RedisServer, workdir: Path, heartbeat_s: str) -> CeleryWorker:
    """A Celery worker on the CPU that publishes its budget every ``heartbeat_s``, started."""
    env = {"CNNVIZ_WORKER_HEARTBEAT_INTERVAL": heartbeat_s, "CNNVIZ_WORKER_DEVICE": "cpu"}
    return CeleryWorker(redis_server.url, workdir, env).start()


def test_a_worker_publishes_its_budget_and_a_dead_ones_expires(
    own_redis: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    worker = cpu_worker(own_redis, tmp_path, heartbeat_s="0.5")
    try:
        (budget,) = wait_for(lambda: live(client, JOB_QUEUE), 60, "the worker's budget")
        assert budget == WorkerBudget(worker=worker.name, device="cpu", memory_budget_mb=1024)
        assert 0 < client.pttl(budget_key(JOB_QUEUE, worker.name)) <= 1500  # 3 heartbeats
        worker.kill()  # no goodbye: the budget must expire by itself
        wait_for(lambda: not live(client, JOB_QUEUE), 10, "the dead worker's budget to expire")
    finally:
        worker.stop()


def test_a_worker_that_stops_withdraws_its_budget(
    own_redis: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    worker = cpu_worker(own_redis, tmp_path, heartbeat_s="30")
    try:
        wait_for(lambda: live(client, JOB_QUEUE), 60, "the worker's budget")
    finally:
        worker.stop()  # a cold shutdown: the bootstep's stop still runs
    assert live(client, JOB_QUEUE) == []  # at once, not 90 s later


def test_cuda_is_asked_in_a_process_of_its_own() -> None:
    assert children_budget("cpu", 2) == ("cpu", DEFAULT_MEMORY_BUDGET_MB)
    if not torch.cuda.is_available():  # the other process says so; this one stays clean
        with pytest.raises(subprocess.CalledProcessError, match=r"workers\.device"):
            children_budget("cuda", 1)
    assert not torch.cuda.is_initialized()
