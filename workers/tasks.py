"""The Celery tasks: thin adapters around the runner (:mod:`workers.run`).

* ``cnnviz.job`` starts a job of any kind. A job of one shard runs here, to its end. A job of
  several shards sends one ``cnnviz.job.shard`` task per shard whose partial is not kept yet,
  which any workers take. Each shard keeps its partial in the job's record; the shard that
  keeps the last one merges them all (the merge is associative) and writes the result. No
  task ever waits for another.
* Whatever runs holds a lease on it, renewed every ``CNNVIZ_JOB_LEASE_INTERVAL`` seconds. A
  pool child killed mid-job gives its message back at once (``acks_late``,
  ``reject_on_worker_lost``) and the same delivery takes the job over. A whole worker lost
  (its machine gone) renews nothing: its lease lapses after ``CNNVIZ_JOB_LEASE_TIMEOUT`` and
  the API's sweeper sends the job (or the shard) again; an optimization resumes from its last
  checkpoint. The record counts deliveries and fails the job past
  ``CNNVIZ_JOB_MAX_ATTEMPTS``. A shard never raises for its job's own failures: it writes the
  job's final state itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from typing import Any

import redis
from celery import Task, group
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from schemas.jobs import JOB_TASK, SHARD_TASK, JobError, JobTask
from workers.app import CORES, app, settings
from workers.device import child_index, choose_device
from workers.kinds import Partial, Resources
from workers.kinds.optimization import warm_up
from workers.leases import LeaseKeeper
from workers.logs import job_logging
from workers.records.redis import RedisRecords
from workers.run import FAILED, SKIPPED, Limits, begin, conclude, ended, run_shard

log = logging.getLogger(__name__)

_resources: Resources | None = None
_redis: redis.Redis | None = None


def child_resources() -> Resources:
    """This pool child's models and data sets, on its device; models load at first use,
    but for those of ``CNNVIZ_COMPILE_WARMUP``, whose steps compile in the background."""
    global _resources
    if _resources is None:
        device = choose_device(settings.worker_device, child_index())
        log.info("pool child %d uses %s", child_index(), device)
        _resources = Resources.from_settings(
            settings,
            settings.model_registry(device),
            settings.dataset_registry(),
            CORES,
            blobs=RedisRecords(_client()),  # where the API kept a request's images
        )
        warm_up(_resources, settings.compile_warmup_pairs())  # in the background
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
        _client(),
        max_attempts=settings.job_max_attempts,
        ttl_seconds=task.ttl_seconds,
        lease_s=settings.job_lease_timeout,
        results_max_bytes=settings.redis_results_max_bytes,
    )


@functools.cache
def _limits() -> Limits:
    """The limits of every task of this process, from its settings."""
    return Limits.from_settings(
        settings,
        timeout_errors=(SoftTimeLimitExceeded,),
        enforce_deadline=False,  # Celery's soft limit raises in the task
        max_deliveries=settings.job_max_attempts,
        lease_interval_s=settings.job_lease_interval,
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
    """Start a job: run it here when it is one shard, else send out its shards."""
    task = JobTask.model_validate(payload)
    with job_logging(task.job_id):
        records = _records(task)
        resources = child_resources()
        limits = _limits()
        started = begin(task, resources, records, limits, holder=self.request.id or "")
        if started is None:
            return {"job_id": task.job_id, "status": None}
        attempt, shards = started
        if shards == 1:
            partial = run_shard(
                task, attempt, 0, 1, resources, records, limits, holder=self.request.id or ""
            )
            with _leased(task, attempt, records, limits):
                status = conclude(task, attempt, [partial], resources, records, limits)
            return {"job_id": task.job_id, "status": status.value if status else None}
        records.plan(task.job_id, attempt, shards)
        kept = records.partials(task.job_id)
        missing = [i for i in range(shards) if i not in kept]
        if not missing:  # every shard was run by an earlier attempt: only the merge is left
            return _merge(task, attempt, shards, records, resources, limits)
        group(run_job_shard.s(payload, attempt, i, shards) for i in missing).apply_async()
        # The shards hold leases of their own from here.
        records.release(task.job_id, attempt)
        log.info("job %s: %d of %d shards sent", task.job_id, len(missing), shards)
        return {"job_id": task.job_id, "status": "running", "attempt": attempt, "shards": shards}


@app.task(name=SHARD_TASK, bind=True, base=JobTaskBase)
def run_job_shard(
    self: Task, payload: dict[str, Any], attempt: int, shard: int, shards: int
) -> dict[str, Any]:
    """One shard of a job: keep its partial in the record; the last one merges them all."""
    task = JobTask.model_validate(payload)
    with job_logging(task.job_id):
        records = _records(task)
        resources = child_resources()
        limits = _limits()
        partial = run_shard(
            task, attempt, shard, shards, resources, records, limits, holder=self.request.id or ""
        )
        summary: dict[str, Any] = {"job_id": task.job_id, "shard": shard}
        if SKIPPED in partial:
            return {**summary, "status": partial[SKIPPED]}
        if FAILED in partial:  # the job failed, was cancelled or superseded: end it now
            status = conclude(task, attempt, [partial], resources, records, limits)
            return {**summary, "status": status.value if status else None}
        if not records.store_partial(task.job_id, attempt, shard, shards, json.dumps(partial)):
            return {**summary, "status": "kept"}
        return {**summary, **_merge(task, attempt, shards, records, resources, limits)}


def _merge(
    task: JobTask,
    attempt: int,
    shards: int,
    records: RedisRecords,
    resources: Resources,
    limits: Limits,
) -> dict[str, Any]:
    """Merge the kept partials, in shard order, and write the job's result (holding the
    job's lease meanwhile: a merge is one more piece of work a lost worker could drop)."""
    kept = records.partials(task.job_id)
    partials: list[Partial] = [json.loads(kept[i]) for i in range(shards)]
    with _leased(task, attempt, records, limits):
        status = conclude(task, attempt, partials, resources, records, limits)
    return {"job_id": task.job_id, "status": status.value if status else None}


def _leased(
    task: JobTask, attempt: int, records: RedisRecords, limits: Limits
) -> contextlib.AbstractContextManager[object]:
    """Renew the job's own lease while the block runs."""
    if limits.lease_interval_s is None:
        return contextlib.nullcontext()
    return LeaseKeeper(records, task.job_id, attempt, limits.lease_interval_s)
