"""The job store seen from the API: one interface, in memory or in Redis.

The API creates records, reads them, cancels and deletes them; whatever runs the job moves
the record along through :class:`workers.run.Recorder`. A record exists from the moment a
job is accepted, so an unknown id is a 404 and never "pending forever".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.jobs import JobRecord, OptimizationResult


class JobNotFound(LookupError):
    """No record with this id (never created, deleted, or past its TTL)."""


class JobNotFinished(Exception):
    """The job is queued or running; the operation needs a finished one."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        super().__init__(record.id)


class IdempotencyConflict(Exception):
    """An idempotency key that was used before with another request."""


class StoreUnavailable(Exception):
    """The store (Redis) cannot be reached."""


@dataclass(frozen=True)
class Idempotency:
    """An idempotency key (hashed) and the fingerprint of the request that came with it."""

    digest: str
    fingerprint: str


class JobStore(Protocol):
    async def create(
        self, record: JobRecord, ttl_seconds: int, idempotency: Idempotency | None
    ) -> tuple[JobRecord, bool]:
        """Store a new record; with a known idempotency key, the earlier record and False.

        Raises IdempotencyConflict when the key came with another request.
        """

    async def get(self, job_id: str) -> JobRecord:
        """The record; JobNotFound otherwise."""

    async def result(self, job_id: str) -> OptimizationResult | None:
        """The result of a succeeded job."""

    async def preview(self, job_id: str) -> bytes | None:
        """The latest preview PNG, if one was taken."""

    async def cancel(self, job_id: str) -> JobRecord:
        """Ask the job to stop; a queued job is cancelled at once. The record after."""

    async def delete(self, job_id: str) -> None:
        """Forget a finished job; JobNotFound or JobNotFinished otherwise."""

    async def discard(self, job_id: str) -> None:
        """Remove a record whose job could not be queued (and its idempotency key)."""

    async def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        """Note ``job_id`` as the latest job of the request whose fingerprint digest this is."""

    async def recall(self, digest: str) -> str | None:
        """The latest job noted for this request digest, if any."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    async def close(self) -> None: ...
