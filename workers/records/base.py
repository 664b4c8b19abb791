"""The job record's life, one interface for every backend (:mod:`.memory`, :mod:`.redis`).

The API creates records, reads, cancels and deletes them; whatever runs the job (the
in-process executor or a Celery worker) moves them along: start, progress, the stop check,
finish. Both sides use the same backend object, so each transition is written once per
backend. Every write after :meth:`JobRecords.start` carries the attempt number it returned:
a write from an attempt that is no longer the current one (a redelivered job's first run) is
ignored, and a finished record is never written again, which makes a result exactly-once.

Methods block (the Redis backend does I/O): the API calls them off its event loop when
``blocking`` says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from schemas.jobs import JobError, JobRecord, JobStatus, Progress
from workers.records.outbox import CallbackOutbox
from workers.records.stats import Durations
from workers.records.verdicts import Verdicts

__all__ = [
    "NO_CONDITIONS",
    "Conditions",
    "Ending",
    "Idempotency",
    "JobRecords",
    "Lapsed",
    "ShardStart",
]


@dataclass(frozen=True)
class Idempotency:
    """An idempotency key (hashed) and the fingerprint of the request that came with it."""

    digest: str
    fingerprint: str


@dataclass(frozen=True)
class Conditions:
    """What :meth:`JobRecords.create` checks a new record against: the idempotency key its
    request came with (None: none), and how many queued and running jobs its owner may have
    (None: any number)."""

    idempotency: Idempotency | None = None
    max_active: int | None = None


NO_CONDITIONS = Conditions()
"""A record created whatever its owner runs, with no idempotency key."""


@dataclass(frozen=True)
class Ending:
    """How an attempt ends (:meth:`JobRecords.finish`): the job's final status, with the
    result JSON its kind wrote (a success) or its error (a failure)."""

    status: JobStatus
    result: str | None = None
    error: JobError | None = None


class ShardStart(StrEnum):
    """What a delivery of one shard of a job of several shards is to do."""

    RUN = "run"
    DONE = "done"  # its partial is stored (an earlier delivery or attempt ran it)
    LEASED = "leased"  # another delivery holds a live lease on it and runs it
    STOP = "stop"  # cancelled, superseded, gone, or delivered too often (the job failed)


@dataclass(frozen=True)
class Lapsed:
    """A lease that lapsed, as the sweeper claimed it.

    ``action`` says what the sweeper must do: ``job``: send the job again (its record is
    ``queued`` for its next attempt); ``shard``: send shard ``shard`` of ``attempt`` again
    (one of ``shards``); ``cancelled``: the job was asked to stop and is now cancelled (its
    callback is due). ``delivery`` numbers the sends of the job, for a task id of its own.
    """

    job_id: str
    action: str
    shard: int = 0
    shards: int = 1
    attempt: int = 0
    delivery: int = 0


Cursor = tuple[float, str]
"""Where a page of an owner's jobs ended: the last job's ``(created_at, id)``."""


@dataclass(frozen=True)
class JobFilter:
    """Which of an owner's jobs a listing shows (None: any)."""

    kind: str | None = None
    model: str | None = None
    status: JobStatus | None = None

    def __call__(self, record: JobRecord) -> bool:
        return (
            (self.kind is None or record.kind == self.kind)
            and (self.model is None or record.model == self.model)
            and (self.status is None or record.status == self.status)
        )


def newest_first(
    records: Iterable[JobRecord], chosen: JobFilter, before: Cursor | None, limit: int
) -> list[JobRecord]:
    """The first ``limit`` of ``records`` that ``chosen`` keeps, newest first (ties by id),
    after ``before``: the page every backend answers."""
    kept = [r for r in records if chosen(r) and (before is None or (r.created_at, r.id) < before)]
    kept.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    return kept[:limit]


class JobRecords(Verdicts, Protocol):
    """Job records in one backend: the API's operations and the runner's transitions; and
    the sanity-check verdicts, which outlive the jobs (:mod:`workers.records.verdicts`)."""

    blocking: bool
    """Whether calls do I/O (the API then runs them in a thread)."""

    @property
    def callbacks(self) -> CallbackOutbox:
        """The callbacks due (:mod:`workers.records.outbox`): whatever ends a job adds it;
        the API delivers them."""

    # ---- the API's side ----

    def create(
        self, record: JobRecord, ttl_seconds: int, conditions: Conditions = NO_CONDITIONS
    ) -> tuple[JobRecord, bool]:
        """Store a new record; with a known idempotency key, the earlier record and False.

        Raises IdempotencyConflict when the key came with another request, and QuotaExceeded
        when ``record.owner`` already has ``conditions.max_active`` queued or running jobs
        (checked after the idempotency key, in the same atomic step: a replay is not a new
        job).
        """

    def get(self, job_id: str) -> JobRecord:
        """The record; JobNotFound otherwise."""

    def result(self, job_id: str) -> str | None:
        """The result of a succeeded job, as the JSON its kind wrote (kind-agnostic).

        This and :meth:`preview` and :meth:`arrays` raise ResultExpired for a finished job
        whose parts a capped store dropped."""

    def preview(self, job_id: str) -> bytes | None:
        """The latest preview PNG, if one was taken."""

    def arrays(self, job_id: str) -> bytes | None:
        """The raw float tensors the job attached (safetensors), if any."""

    def cancel(self, job_id: str) -> JobRecord:
        """Ask the job to stop; a queued job is cancelled at once. The record after."""

    def delete(self, job_id: str) -> None:
        """Forget a finished job; JobNotFound or JobNotFinished otherwise."""

    def discard(self, job_id: str) -> None:
        """Remove a record whose job could not be queued (and its idempotency key)."""

    def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        """Note ``job_id`` as the latest job of the request whose fingerprint digest this is."""

    def recall(self, digest: str) -> str | None:
        """The latest job noted for this request digest, if any."""

    def put_blob(self, digest: str, data: bytes, ttl_seconds: int) -> None:
        """Keep ``data`` under its sha256 ``digest`` for ``ttl_seconds`` (longer if kept
        again): what a request names by reference, so that no task message carries it."""

    def blob(self, digest: str) -> bytes | None:
        """The bytes kept under ``digest``; None once expired or never kept."""

    def ping(self) -> None:
        """Raise RecordsUnavailable when the backend cannot be reached."""

    def appendonly(self) -> bool | None:
        """Whether the backend persists every write (Redis ``appendonly``); None: unknown."""

    def close(self) -> None: ...

    def owned(
        self, owner: str, chosen: JobFilter, before: Cursor | None, limit: int
    ) -> list[JobRecord]:
        """``owner``'s live jobs that ``chosen`` keeps, newest first, after ``before``, at
        most ``limit`` (:func:`newest_first`)."""

    # ---- metrics (GET /metrics) ----

    def counts(self) -> dict[tuple[str, str], int]:
        """How many records there are now of each ``(kind, status)``."""

    def observe_duration(self, kind: str, status: JobStatus, seconds: float) -> None:
        """Add a job that ran ``seconds`` to its kind and status's histogram (best effort)."""

    def durations(self) -> dict[tuple[str, str], Durations]:
        """The running-time histograms, per ``(kind, status)``."""

    # ---- the runner's side ----

    def start(self, job_id: str, holder: str = "") -> int | None:
        """Mark the job running under a lease held by ``holder`` (the delivery: a task id);
        its attempt number, or None when it must not run (finished, cancelled, gone, or
        another delivery holds a live lease on it)."""

    def renew(self, job_id: str, attempt: int, shard: int | None = None) -> bool:
        """Extend the lease of the running attempt (of one shard of it, for a job of several
        shards); False when the attempt, or this shard's delivery, must stop."""

    def release(self, job_id: str, attempt: int) -> None:
        """Drop the job's own lease: its shards, sent out, hold leases of their own."""

    def save_checkpoint(self, job_id: str, attempt: int, data: bytes) -> None:
        """Keep the current attempt's latest checkpoint (replacing the one before); best
        effort: a job that cannot checkpoint still runs."""

    def checkpoint(self, job_id: str) -> bytes | None:
        """The latest checkpoint of the job (from any attempt), if one was saved."""

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        """Record progress (and a preview PNG) of the current attempt; best effort."""

    def attach(self, job_id: str, attempt: int, data: bytes, ttl_seconds: int) -> None:
        """Keep the current attempt's raw float tensors (safetensors bytes); best effort."""

    def shard_progress(self, job_id: str, attempt: int, shard: int, done: int, total: int) -> None:
        """Record that ``shard`` has done ``done`` of its work; the job's progress is the sum
        over its shards, out of ``total``. A shard delivered again starts from 0 again."""

    def start_shard(
        self, job_id: str, attempt: int, shard: int, max_deliveries: int, holder: str = ""
    ) -> ShardStart:
        """Count a delivery of ``shard`` and give it the shard's lease; or say why not: its
        partial is stored, another delivery holds it, or the attempt must not go on (stopped,
        superseded, or the shard was delivered more than ``max_deliveries`` times, which
        fails the job as ``worker_lost``)."""

    def should_stop(self, job_id: str, attempt: int) -> bool:
        """Whether cancel was asked for, or this attempt was superseded; called every step."""

    def finish(self, job_id: str, attempt: int, ending: Ending, ttl_seconds: int) -> bool:
        """Write the final state (and the result JSON) once, to live ``ttl_seconds``; False
        when another write got there first or the attempt is not the current one."""

    def fail_running(self, job_id: str, error: JobError, ttl_seconds: int) -> bool:
        """End the current attempt of a running job as failed, from outside that attempt
        (a worker's parent whose child it killed at the hard time limit)."""


def lost_error(deliveries: int) -> JobError:
    """The error of a job whose worker was lost at each of its ``deliveries``."""
    return JobError(
        code="worker_lost",
        message=f"the job was delivered {deliveries} times and each time its worker was "
        "lost (killed, out of memory, or the machine went away)",
    )
