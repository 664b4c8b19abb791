"""The Celery tasks: thin adapters around the runner (:mod:`workers.run`).

* ``cnnviz.job`` starts a job of any kind. A job of one shard runs here, to its end. A job of
  several shards is handed to a chord: a **group** of ``cnnviz.job.shard`` tasks, one per
  shard, that any workers take, and a ``cnnviz.job.merge`` callback that merges their
  partials (the merge is associative) and writes the result. No task ever waits for another:
  Celery's chord counts the finished shards in the result backend (Redis) and sends the
  callback when the last one is done.
* A shard whose worker is lost is delivered again (``acks_late``, ``reject_on_worker_lost``);
  its record counts deliveries and fails the job past ``CNNVIZ_JOB_MAX_ATTEMPTS``. A shard
  never raises for its job's own failures: it returns a failure the merge records, so the
  chord always completes and the record always gets its one final state.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, chord, group
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from schemas.jobs import JOB_TASK, MERGE_TASK, SHARD_TASK, JobError, JobTask
from workers.app import CORES, app, settings
from workers.callbacks import CallbackPolicy
from workers.device import child_index, choose_device
from workers.kinds import Partial, Resources
from workers.logs import job_logging
from workers.records.redis import RedisRecords
from workers.run import Limits, begin, conclude, ended, run_shard

log = logging.getLogger(__name__)

_resources: Resources | None = None
_redis: redis.Redis | None = None


def _child_resources() -> Resources:
    """This pool child's models and data sets, on its device; models load at first use."""
    global _resources
    if _resources is None:
        device = choose_device(settings.worker_device, child_index())
        log.info("pool child %d uses %s", child_index(), device)
        _resources = Resources(
            models=ModelRegistry.from_file(settings.models_file, device=device),
            datasets=DatasetRegistry.from_file(settings.models_file),
            shard_images=settings.exemplar_shard_images,
            loader_workers=settings.exemplar_loader_workers,
            batch_size=settings.exemplar_batch_size,
            cores=CORES,
        )
    return _resources


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, health_check_interval=30
        )
    return _redis


def _records(task: JobTask) -> RedisRecords:
    return RedisRecords(
        _client(), max_attempts=settings.job_max_attempts, ttl_seconds=task.ttl_seconds
    )


def _limits() -> Limits:
    return Limits(
        timeout_errors=(SoftTimeLimitExceeded,),
        soft_time_limit_s=settings.job_soft_time_limit,
        enforce_deadline=False,  # Celery's soft limit raises in the task
        progress_interval_s=settings.job_progress_interval,
        preview_interval_s=settings.job_preview_interval,
        max_deliveries=settings.job_max_attempts,
        callback=CallbackPolicy(
            settings.callback_secret,
            attempts=settings.callback_attempts,
            backoff_s=settings.callback_backoff,
        )
        if settings.callback_secret
        else None,
    )


class JobTaskBase(Task):
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Runs in the worker's parent for a hard time limit (the child was killed).
        if isinstance(exc, TimeLimitExceeded):
            error = JobError(
                code="timeout",
                message=f"the job was stopped at the hard time limit of "
                f"{settings.job_time_limit:g} s; ask for fewer steps, units or pixels",
            )
            # The killed child cannot write its record: the parent does, through the same
            # fenced final write as any other job end (TTLs renewed, attempt checked).
            payload = next(a for a in args if isinstance(a, dict) and "job_id" in a)
            task = JobTask.model_validate(payload)
            with job_logging(task.job_id):
                log.error("job %s: killed at the hard time limit", task.job_id)
                records = _records(task)
                if records.fail_running(task.job_id, error, task.ttl_seconds):
                    ended(task, records, _limits())


@app.task(name=JOB_TASK, bind=True, base=JobTaskBase)
def run_job(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Start a job: run it here when it is one shard, else fan its shards out in a chord."""
    task = JobTask.model_validate(payload)
    with job_logging(task.job_id):
        records = _records(task)
        resources = _child_resources()
        started = begin(task, resources, records, _limits())
        if started is None:
            return {"job_id": task.job_id, "status": None}
        attempt, shards = started
        if shards == 1:
            partial = run_shard(task, attempt, 0, 1, resources, records, _limits())
            status = conclude(task, attempt, [partial], resources, records, _limits())
            return {"job_id": task.job_id, "status": status.value if status else None}
        header = group(run_job_shard.s(payload, attempt, i, shards) for i in range(shards))
        chord(header, merge_job.s(payload, attempt)).apply_async()
        log.info("job %s: %d shards sent", task.job_id, shards)
        return {"job_id": task.job_id, "status": "running", "attempt": attempt, "shards": shards}


@app.task(name=SHARD_TASK, bind=True, base=JobTaskBase)
def run_job_shard(
    self: Task, payload: dict[str, Any], attempt: int, shard: int, shards: int
) -> Partial:
    """One shard of a job; its partial result (small JSON, kept in the result backend)."""
    task = JobTask.model_validate(payload)
    with job_logging(task.job_id):
        return run_shard(
            task, attempt, shard, shards, _child_resources(), _records(task), _limits()
        )


@app.task(name=MERGE_TASK, bind=True, base=JobTaskBase)
def merge_job(
    self: Task, partials: list[Partial], payload: dict[str, Any], attempt: int
) -> dict[str, Any]:
    """The chord's callback: merge the shards' partials and write the job's result."""
    task = JobTask.model_validate(payload)
    with job_logging(task.job_id):
        status = conclude(task, attempt, partials, _child_resources(), _records(task), _limits())
    return {"job_id": task.job_id, "status": status.value if status else None}
