"""What the job records' operations raise, in every backend (:mod:`workers.records.base`);
the API answers each with its own HTTP error (:mod:`service.jobs.manager`)."""

from __future__ import annotations

from schemas.jobs import JobRecord

__all__ = [
    "IdempotencyConflict",
    "JobNotFinished",
    "JobNotFound",
    "QuotaExceeded",
    "RecordsUnavailable",
    "ResultExpired",
]


class JobNotFound(LookupError):
    """No record with this id (never created, deleted, or past its TTL)."""


class JobNotFinished(Exception):
    """The job is queued or running; the operation needs a finished one."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        super().__init__(record.id)


class IdempotencyConflict(Exception):
    """An idempotency key that was used before with another request."""


class QuotaExceeded(Exception):
    """The record's owner already has as many queued and running jobs as it may."""

    def __init__(self, owner: str, active: int) -> None:
        self.owner = owner
        self.active = active
        super().__init__(f"{owner} has {active} unfinished jobs")


class ResultExpired(Exception):
    """The job finished, but what it kept (result, preview, raw tensors) was dropped to keep
    the store under its byte cap; its record remains until its TTL."""


class RecordsUnavailable(Exception):
    """The backend (Redis) cannot be reached."""
