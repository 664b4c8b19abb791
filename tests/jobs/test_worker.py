"""The worker's configuration and its parts that need no running worker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from celery.exceptions import TimeLimitExceeded
from pydantic import ValidationError

from schemas.jobs import JOB_QUEUE, JOB_TASK, SHARD_TASK, JobRecord, JobStatus, JobTask
from schemas.optimization import OptimizationCreate
from tests.jobs.procs import ROOT, RedisServer
from workers.config import WorkerSettings
from workers.device import choose_device
from workers.records import Ending
from workers.records.redis import RedisRecords, record_key
from workers.records.redis_fields import from_fields, to_fields


def test_the_celery_settings_long_gpu_jobs_need() -> None:
    from workers.app import app

    app.loader.import_default_modules()  # the worker imports its tasks (`include`) this way
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    for name in (JOB_TASK, SHARD_TASK):
        assert conf.task_routes[name] == {"queue": JOB_QUEUE}
        assert name in app.tasks
    assert conf.worker_pool == "prefork"
    worker = WorkerSettings()
    assert conf.worker_max_tasks_per_child == worker.worker_max_tasks_per_child
    assert conf.result_expires == worker.result_expires
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility


def test_limits_out_of_order_are_refused() -> None:
    with pytest.raises(ValidationError, match="SOFT_TIME_LIMIT < "):
        WorkerSettings(job_soft_time_limit=60, job_time_limit=50)
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        WorkerSettings(job_time_limit=100, broker_visibility_timeout=100)


def test_the_worker_device_is_cpu_without_cuda() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    if not torch.cuda.is_available():
        assert choose_device("auto", child_index=3) == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            choose_device("cuda")


def test_loading_the_worker_touches_no_model_and_no_cuda() -> None:
    code = (
        "import torch, workers.tasks as t\n"
        "assert t._resources is None\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.fixture
def tasks_on(shared_redis: RedisServer) -> Iterator[object]:
    import workers.tasks as tasks

    saved = tasks._redis
    tasks._redis = shared_redis.client()
    yield tasks
    tasks._redis = saved


def test_a_job_killed_at_the_hard_limit_is_recorded_as_a_timeout(
    tasks_on: object, shared_redis: RedisServer
) -> None:
    import workers.tasks as tasks

    job_id = f"hard-{time.monotonic_ns()}"
    record = JobRecord(
        id=job_id,
        kind="optimization",
        model="shapes",
        status=JobStatus.RUNNING,
        request=OptimizationCreate(layer="block1.relu", channels=[0]).model_dump(mode="json"),
        created_at=time.time(),
        attempts=1,
    )
    client = shared_redis.client()
    fields: dict[Any, Any] = dict(to_fields(record))
    client.hset(record_key(job_id), mapping=fields)
    payload = JobTask(
        job_id=job_id, kind="optimization", model="shapes", request=record.request, ttl_seconds=120
    ).model_dump(mode="json")

    # What Celery calls in the worker's parent when it kills a child at the hard limit.
    tasks.run_job.on_failure(TimeLimitExceeded(9), job_id, (payload,), {}, None)

    failed = from_fields(client.hgetall(record_key(job_id)))
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.code == "timeout"
    assert "hard time limit" in failed.error.message
    # Like every finished job, it lives its TTL from now on.
    assert 0 < client.ttl(record_key(job_id)) <= 120

    # A redelivered attempt that is running now is not failed by the old attempt's end.
    client.hset(record_key(job_id), mapping={"status": "running", "attempts": "2"})
    recorder = RedisRecords(client, max_attempts=3, ttl_seconds=120)
    assert recorder.finish(job_id, 1, Ending(JobStatus.FAILED, error=failed.error), 120) is False
    assert client.hget(record_key(job_id), "status") == b"running"


def test_gpu_children_spread_over_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [choose_device("auto", i) for i in range(3)] == [
        torch.device("cuda", 0),
        torch.device("cuda", 1),
        torch.device("cuda", 0),
    ]
    assert choose_device("cuda", 3) == torch.device("cuda", 1)
