"""The runner: one job of any kind through its record's life, whatever carries it.

A job is started once per attempt (:meth:`JobRecords.start`), runs as its kind's shards, and
ends with exactly one final write: the merged result, or an error. The pieces are separate
so that each transport composes them its way:

* :func:`execute` runs a whole job in this process, its shards one after another (the
  in-process transport; and a Celery worker, for a job of one shard);
* :func:`begin`, :func:`run_shard` and :func:`conclude` are the steps of a job whose shards
  run as Celery tasks on many workers, each keeping its partial in the record, the last one
  merging them.

A Celery worker holds a lease on what it runs (:class:`~workers.leases.LeaseKeeper`) and
checkpoints an optimization every few steps; a job whose worker was lost is sent again by
the API's sweeper and its next attempt resumes from the last checkpoint (the shards whose
partials are kept are not run again).

This module imports ``cnnviz``, ``schemas`` and the job domain only: the service imports it
for the in-process transport and must not pull Celery in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from cnnviz.errors import CnnvizError, ModelChangedError, UnknownModelError
from schemas.errors import with_listing
from schemas.jobs import JobError, JobStatus, JobTask, Progress
from workers.config import JobSettings
from workers.kinds import (
    JobCancelled,
    JobContext,
    JobKind,
    JobTimedOut,
    Partial,
    Resources,
    get_kind,
)
from workers.leases import LeaseKeeper
from workers.logs import job_logging
from workers.records import Ending, JobNotFound, JobRecords, RecordsUnavailable, ShardStart

__all__ = ["FAILED", "SKIPPED", "Limits", "begin", "conclude", "ended", "execute", "run_shard"]

log = logging.getLogger(__name__)

FAILED = "__failed__"
"""A shard that did not produce its partial says why under this key (and nothing else)."""
SKIPPED = "__skipped__"
"""A delivery of a shard that did not run it says why under this key: its partial was kept
already, or another delivery holds its lease."""


@dataclass(frozen=True)
class Limits:
    """How a carrier bounds and reports a job.

    ``timeout_errors`` are the carrier's own time-limit exceptions (Celery's soft limit).
    ``soft_time_limit_s`` is the limit an error message names; with ``enforce_deadline``
    the runner also stops the job itself at the first step past it (the in-process executor
    has no other way: a thread cannot be interrupted). ``max_deliveries`` bounds how often
    one shard is delivered again after its worker was lost. ``lease_interval_s``: how often a
    running shard renews its lease (None: no lease, as in the API process, which runs what it
    starts); ``checkpoint_steps``: how often a resumable kind saves its state (0: never), and
    ``checkpoint_interval_s`` the least time between two saves.
    """

    timeout_errors: tuple[type[BaseException], ...] = ()
    soft_time_limit_s: float | None = None
    enforce_deadline: bool = True
    progress_interval_s: float = 0.5
    preview_interval_s: float = 2.0
    max_deliveries: int = 3
    lease_interval_s: float | None = None
    checkpoint_steps: int = 0
    checkpoint_interval_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: JobSettings, **carrier: Any) -> Limits:
        """The limits ``settings`` give, for the API and the workers alike; ``carrier``: what
        the carrier sets itself (its timeout errors, whether it enforces the deadline, its
        leases and deliveries)."""
        values: dict[str, Any] = {
            "soft_time_limit_s": settings.job_soft_time_limit,
            "progress_interval_s": settings.job_progress_interval,
            "preview_interval_s": settings.job_preview_interval,
            "checkpoint_steps": settings.job_checkpoint_steps,
            "checkpoint_interval_s": settings.job_checkpoint_interval,
        }
        return cls(**(values | carrier))

    def deadline(self) -> float | None:
        if self.soft_time_limit_s is None or not self.enforce_deadline:
            return None
        return time.monotonic() + self.soft_time_limit_s


def begin(
    task: JobTask,
    resources: Resources,
    records: JobRecords,
    limits: Limits | None = None,
    holder: str = "",
) -> tuple[int, int] | None:
    """Start the job's next attempt: ``(attempt, shards)``, or None when it must not run.

    ``holder`` names the delivery (a task id) that takes the job's lease. A job whose plan
    cannot be made (its data set went away) is finished as failed here. A job cancelled
    before it ever started ends here too (its callback was made due by the cancel).
    """
    limits = limits or Limits()
    attempt = records.start(task.job_id, holder)
    if attempt is None:
        log.info("job %s is not to run (finished, cancelled or gone)", task.job_id)
        with contextlib.suppress(JobNotFound, RecordsUnavailable):
            record = records.get(task.job_id)
            if record.status == JobStatus.CANCELLED and record.started_at is None:
                ended(task, records, limits)
        return None
    try:
        kind = get_kind(task.kind)
        shards = kind.shards(kind.parse(task.request), task.model, resources)
    except Exception as exc:
        status, error = _outcome(task, exc, limits)
        if records.finish(task.job_id, attempt, Ending(status, error=error), task.ttl_seconds):
            ended(task, records, limits)
        return None
    return attempt, shards


def run_shard(
    task: JobTask,
    attempt: int,
    shard: int,
    shards: int,
    resources: Resources,
    records: JobRecords,
    limits: Limits,
    deadline: float | None = None,
    holder: str = "",
) -> Partial:
    """Run one shard of the current attempt; its partial, or a failure :func:`conclude` reads
    (or, for a delivery that must not run the shard, a :data:`SKIPPED` note).

    Never raises for a job's own failure (cancel, timeout, bad data, a bug in the kind): a
    shard must always return, so that the one final state gets written. Progress of a job of
    several shards is summed over them. ``holder`` names the delivery (a task id).
    """
    kind = get_kind(task.kind)
    job_id = task.job_id
    try:
        request = kind.parse(task.request)
        if shards > 1:
            started = records.start_shard(job_id, attempt, shard, limits.max_deliveries, holder)
            if started in (ShardStart.DONE, ShardStart.LEASED):
                return {SKIPPED: started.value}
            if started != ShardStart.RUN:
                raise JobCancelled(job_id)
            total = 0  # counted under the lease: the shard's lease runs from its start

            def report(progress: Progress, preview: bytes | None) -> None:
                # Previews of one shard would mislead: only the summed count is shown.
                records.shard_progress(job_id, attempt, shard, progress.step, total)

        else:

            def report(progress: Progress, preview: bytes | None) -> None:
                records.progress(job_id, attempt, progress, preview)

        cores = resources.cores
        lease = (
            LeaseKeeper(
                records, job_id, attempt, limits.lease_interval_s, shard if shards > 1 else None
            )
            if limits.lease_interval_s is not None
            else None
        )
        with (
            (
                cores.claim(background=resources.background)
                if cores is not None
                else contextlib.nullcontext()
            ) as claim,
            lease if lease is not None else contextlib.nullcontext(),
        ):

            def should_cancel() -> bool:
                if claim is not None:  # every step: follow the share as others start and end
                    claim.refresh()
                if lease is not None and lease.lost:
                    return True
                return records.should_stop(job_id, attempt)

            if shards > 1:  # loading a data set to count it can take longer than a lease
                total = kind.work(request, task.model, resources)
            # A job of one shard resumes from its last checkpoint (a shard of several is
            # its own checkpoint: its partial is kept once it is done).
            resumable = shards == 1 and limits.checkpoint_steps > 0

            context = JobContext(
                job_id=job_id,
                on_progress=report,
                should_cancel=should_cancel,
                deadline=deadline if deadline is not None else limits.deadline(),
                progress_interval_s=limits.progress_interval_s,
                preview_interval_s=limits.preview_interval_s,
                # Raw tensors only from a job of one shard (one shard's alone would mislead).
                on_attach=(lambda data: records.attach(job_id, attempt, data, task.ttl_seconds))
                if shards == 1
                else None,
                on_checkpoint=(lambda data: records.save_checkpoint(job_id, attempt, data))
                if resumable
                else None,
                checkpoint_steps=limits.checkpoint_steps,
                checkpoint_interval_s=limits.checkpoint_interval_s,
                resume=records.checkpoint(job_id) if resumable else None,
            )
            _check_weights(task, resources)
            return kind.run_shard(request, task.model, shard, resources, context)
    except Exception as exc:
        status, error = _outcome(task, exc, limits)
        return {FAILED: {"status": status.value, "error": error and error.model_dump()}}


def conclude(
    task: JobTask,
    attempt: int,
    partials: list[Partial],
    resources: Resources,
    records: JobRecords,
    limits: Limits,
) -> JobStatus | None:
    """Merge the shards' partials and write the job's one final state.

    Returns the status written, or None when another attempt (or a cancel) got there first.
    """
    failed = next((p[FAILED] for p in partials if FAILED in p), None)
    result: str | None = None
    error: JobError | None = None
    if failed is not None:
        status = JobStatus(failed["status"])
        error = JobError.model_validate(failed["error"]) if failed["error"] else None
    else:
        kind: JobKind[Any, Any] = get_kind(task.kind)
        try:
            request = kind.parse(task.request)
            merged = kind.merge(request, task.model, partials, resources)
            merged = kind.finalize(merged, request, task.model, task.weights_sha256, records)
            result = merged.model_dump_json()
            status = JobStatus.SUCCEEDED
        except Exception as exc:
            status, error = _outcome(task, exc, limits)
    written = records.finish(task.job_id, attempt, Ending(status, result, error), task.ttl_seconds)
    if not written:
        return None
    ended(task, records, limits)
    return status


def ended(task: JobTask, records: JobRecords, limits: Limits) -> None:
    """After a job's final write: count its running time (first start to end) in the
    metrics. Its callback, if it has one, is due already: the final write made it due in the
    same transaction (the outbox, :mod:`workers.records.outbox`), so a process lost between
    that write and this call loses no callback, and a job that ends twice is added once."""
    try:
        record = records.get(task.job_id)
    except (JobNotFound, RecordsUnavailable):
        return
    if record.started_at is not None and record.finished_at is not None:
        seconds = max(0.0, record.finished_at - record.started_at)
        records.observe_duration(task.kind, record.status, seconds)
    log.info("job %s %s (%s)", task.job_id, record.status.value, task.kind)


def execute(
    task: JobTask, resources: Resources, records: JobRecords, limits: Limits | None = None
) -> JobStatus | None:
    """Run one whole job here, its shards in sequence: start, progress, one final state.

    Returns the final status written, or None when the job did not run or another attempt
    wrote it.
    """
    limits = limits or Limits()
    with job_logging(task.job_id):
        started = begin(task, resources, records, limits)
        if started is None:
            return None
        attempt, shards = started
        deadline = limits.deadline()
        partials: list[Partial] = []
        for shard in range(shards):
            partial = run_shard(task, attempt, shard, shards, resources, records, limits, deadline)
            partials.append(partial)
            if FAILED in partial:
                break
        return conclude(task, attempt, partials, resources, records, limits)


def _check_weights(task: JobTask, resources: Resources) -> None:
    """Raise ModelChangedError unless the model's weights are the ones the job was
    submitted for (a registered model replaced or removed meanwhile)."""
    if task.weights_sha256 is None:
        return
    try:
        current = resources.models.weights_digest(task.model)
    except UnknownModelError:
        current = None
    if current != task.weights_sha256:
        raise ModelChangedError(task.model, task.weights_sha256, current)


def _outcome(
    task: JobTask, exc: BaseException, limits: Limits
) -> tuple[JobStatus, JobError | None]:
    """The final status and error of a job that raised ``exc``."""
    if isinstance(exc, JobCancelled):
        return JobStatus.CANCELLED, None
    if isinstance(exc, (JobTimedOut, *limits.timeout_errors)):
        limit = f" of {limits.soft_time_limit_s:g} s" if limits.soft_time_limit_s else ""
        return JobStatus.FAILED, JobError(
            code="timeout",
            message=f"the job ran past its time limit{limit}; ask for less work (fewer steps, "
            "units or images, a smaller image_size)",
        )
    if isinstance(exc, CnnvizError):
        return JobStatus.FAILED, JobError(
            code=exc.code, message=with_listing(str(exc), exc.listing)
        )
    log.error("job %s failed", task.job_id, exc_info=exc)
    return JobStatus.FAILED, JobError(
        code="internal_error", message="the job failed; see the worker's log"
    )
