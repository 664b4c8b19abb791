"""The Celery task: a thin adapter around :func:`workers.run.execute`."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from cnnviz.models import ModelRegistry
from schemas.jobs import OPTIMIZE_TASK, JobError, OptimizationTask
from workers.app import app, settings
from workers.device import child_index, choose_device
from workers.records import RedisRecorder
from workers.run import execute

log = logging.getLogger(__name__)

_registry: ModelRegistry | None = None
_redis: redis.Redis | None = None


def _child_registry() -> ModelRegistry:
    """This pool child's registry, on its device; models load at first use."""
    global _registry
    if _registry is None:
        device = choose_device(settings.worker_device, child_index())
        log.info("pool child %d uses %s", child_index(), device)
        _registry = ModelRegistry.from_file(settings.models_file, device=device)
    return _registry


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, health_check_interval=30
        )
    return _redis


class OptimizeTask(Task):
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
            task = OptimizationTask.model_validate(args[0])
            recorder = RedisRecorder(_client(), settings.job_max_attempts, task.ttl_seconds)
            recorder.fail_running(task_id, error)


@app.task(name=OPTIMIZE_TASK, bind=True, base=OptimizeTask)
def optimize(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Run one optimization job; its record holds the progress and the result."""
    task = OptimizationTask.model_validate(payload)
    recorder = RedisRecorder(_client(), settings.job_max_attempts, task.ttl_seconds)
    status = execute(
        task,
        _child_registry().get,
        recorder,
        timeout_errors=(SoftTimeLimitExceeded,),
        soft_time_limit_s=settings.job_soft_time_limit,
        enforce_deadline=False,
        progress_interval_s=settings.job_progress_interval,
        preview_interval_s=settings.job_preview_interval,
    )
    return {"job_id": task.job_id, "status": status.value if status else None}
