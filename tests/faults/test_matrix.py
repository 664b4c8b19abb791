"""The fault matrix: each fault, one test, with real processes (the API under uvicorn,
Celery worker groups, redis-server on a port of its own). Each asserts that nothing is lost,
no result is written twice and every job ends; ``bench/faults.py`` runs the same cases and
prints their recovery times (docs/reliability.md)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import embedded, queue
from tests.jobs.procs import CeleryWorker, RedisServer

pytestmark = [pytest.mark.slow]


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, with an append-only file fsynced at every write."""
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def aof_queue(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, CeleryWorker]]:
    """A Redis with an append-only file and a worker on it, which the Redis faults share
    (they stop Redis, not the worker: one worker start less on two busy cores)."""
    workdir = tmp_path_factory.mktemp("queue")
    server = RedisServer(workdir, persistent=True).start()
    worker = CeleryWorker(server.url, workdir, queue.LEASE_SOON).start()
    yield server, worker
    worker.stop()
    server.stop()


def test_api_sigkilled_mid_job_loses_nothing_and_resumes_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    print(embedded.api_restarted(tmp_path, signal.SIGKILL))


def test_api_sigtermed_mid_job_loses_nothing_and_resumes_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    print(embedded.api_restarted(tmp_path, signal.SIGTERM))


def test_a_failing_disk_fails_the_job_with_its_reason_and_reads_go_on(tmp_path: Path) -> None:
    print(embedded.disk_fails(tmp_path))


def test_two_apis_on_one_data_dir_run_each_job_once_and_take_over_a_killed_ones(
    tmp_path: Path,
) -> None:
    print(embedded.two_apis(tmp_path))


@pytest.mark.redis
def test_a_worker_group_sigkilled_mid_job_is_resumed_by_a_new_worker(
    aof_redis: RedisServer, tmp_path: Path
) -> None:
    print(queue.worker_group_killed(aof_redis, tmp_path))


@pytest.mark.redis
def test_redis_restarted_on_its_aof_mid_job_loses_nothing(
    aof_queue: tuple[RedisServer, CeleryWorker],
) -> None:
    print(queue.redis_restarted(*aof_queue))


@pytest.mark.redis
def test_redis_paused_30_s_mid_job_loses_nothing(
    aof_queue: tuple[RedisServer, CeleryWorker],
) -> None:
    print(queue.redis_paused(*aof_queue))
