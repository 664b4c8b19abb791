"""The job use cases behind the routes: submit, read, cancel, delete, preview.

Errors leave here as :class:`~service.errors.ApiError` with the status and code the API
documents; core errors (unknown model or layer, a channel out of range) pass through to the
one mapping in :mod:`service.errors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from enum import StrEnum
from typing import Any

from cnnviz.models import ModelRegistry
from schemas.jobs import JobRead, JobRecord, JobStatus, OptimizationCreate, OptimizationTask
from service.concurrency import TorchPool
from service.errors import ApiError
from service.jobs.store import (
    Idempotency,
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    JobStore,
    StoreUnavailable,
)
from service.jobs.transport import (
    QUEUE_RETRY_AFTER_S,
    JobTransport,
    QueueFull,
    QueueUnavailable,
)
from workers.run import prepare

RETRY_AFTER_S = 1  # polling an unfinished job


class Submitted(StrEnum):
    """What a submission did: queued a new job, or answered with an earlier one."""

    CREATED = "created"
    REPLAYED = "replayed"  # the job of an Idempotency-Key seen before
    REUSED = "reused"  # the succeeded job of an identical request: jobs are deterministic


def _unavailable(reason: str) -> ApiError:
    return ApiError(
        503,
        "queue_unavailable",
        f"the job queue is unavailable ({reason}); optimization jobs cannot be submitted or "
        "read now, feature maps still work; retry later",
        {"Retry-After": str(QUEUE_RETRY_AFTER_S)},
    )


def _not_found(job_id: str) -> ApiError:
    return ApiError(
        404, "unknown_job", f"unknown job {job_id!r}: never created, deleted, or expired"
    )


class JobManager:
    """Submits jobs through a transport and keeps their records in a store."""

    def __init__(
        self,
        store: JobStore,
        transport: JobTransport,
        registry: ModelRegistry,
        pool: TorchPool,
        ttl_seconds: int,
    ) -> None:
        self.store = store
        self.transport = transport
        self._registry = registry
        self._pool = pool
        self._ttl = ttl_seconds

    async def submit(
        self,
        model: str,
        request: OptimizationCreate,
        idempotency_key: str | None,
        scope: str = "",
        reuse: bool = True,
    ) -> tuple[JobRead, Submitted]:
        """Validate, record and queue a job; the job and what the submission did.

        An idempotency key is looked up within ``scope`` (the caller's API key), hashed. With
        ``reuse`` and no idempotency key, a request identical to one whose job succeeded (same
        model and weights, same resolved settings and seed) is answered with that job: jobs are
        deterministic.
        """
        spec = self._registry.spec(model)  # UnknownModelError before any work

        def validate() -> OptimizationCreate:
            return prepare(request, self._registry.get(model))

        resolved = await self._pool.run(validate)
        request_digest = hashlib.sha256(
            f"{resolved.fingerprint(model)}\0{spec!r}".encode()
        ).hexdigest()
        # An Idempotency-Key asks for that key's job: reuse answers only requests without one.
        if reuse and idempotency_key is None:
            earlier = await self._succeeded(request_digest)
            if earlier is not None:
                return earlier, Submitted.REUSED
        idempotency = None
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()
            idempotency = Idempotency(digest, request.fingerprint(model))
        record = JobRecord(
            id=uuid.uuid4().hex,
            model=model,
            status=JobStatus.QUEUED,
            request=resolved,
            created_at=time.time(),
        )
        try:
            record, created = await self.store.create(record, self._ttl, idempotency)
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc
        except IdempotencyConflict:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key for "
                "a new request",
            ) from None
        if not created:
            return await self.read(record.id), Submitted.REPLAYED
        task = OptimizationTask(
            job_id=record.id, model=model, request=resolved, ttl_seconds=self._ttl
        )
        try:
            await self.transport.submit(task)
        except (QueueUnavailable, QueueFull) as exc:
            # Without Redis the record cannot be removed; it expires with its TTL.
            with contextlib.suppress(StoreUnavailable):
                await self.store.discard(record.id)
            if isinstance(exc, QueueFull):
                raise  # a ServiceBusy: 503 busy with Retry-After, as on the sync path
            raise _unavailable(str(exc)) from exc
        with contextlib.suppress(StoreUnavailable):  # only reuse is lost
            await self.store.remember(request_digest, record.id, self._ttl)
        return record.read(), Submitted.CREATED

    async def _succeeded(self, request_digest: str) -> JobRead | None:
        """The latest job of this request, if it succeeded and is still kept."""
        try:
            job_id = await self.store.recall(request_digest)
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc
        if job_id is None:
            return None
        try:
            job = await self.read(job_id)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return job if job.status == JobStatus.SUCCEEDED else None

    async def _record(self, job_id: str) -> JobRecord:
        try:
            return await self.store.get(job_id)
        except JobNotFound:
            raise _not_found(job_id) from None
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc

    async def read(self, job_id: str) -> JobRead:
        record = await self._record(job_id)
        result = None
        if record.status == JobStatus.SUCCEEDED:
            try:
                result = await self.store.result(job_id)
            except StoreUnavailable as exc:
                raise _unavailable(str(exc)) from exc
        return record.read(result)

    async def cancel(self, job_id: str) -> JobRead:
        try:
            record = await self.store.cancel(job_id)
        except JobNotFound:
            raise _not_found(job_id) from None
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc
        if record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise ApiError(
                409,
                "job_finished",
                f"job {job_id!r} has already {record.status.value}; there is nothing to cancel",
            )
        return record.read()

    async def delete(self, job_id: str) -> None:
        try:
            await self.store.delete(job_id)
        except JobNotFound:
            raise _not_found(job_id) from None
        except JobNotFinished as exc:
            raise ApiError(
                409,
                "job_not_finished",
                f"job {job_id!r} is {exc.record.status.value}; cancel it "
                f"(POST /v1/jobs/{job_id}/cancel) and delete it once it has stopped",
            ) from None
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc

    async def preview(self, job_id: str) -> bytes:
        record = await self._record(job_id)
        try:
            png = await self.store.preview(job_id)
        except StoreUnavailable as exc:
            raise _unavailable(str(exc)) from exc
        if png is None:
            raise ApiError(
                404,
                "no_preview",
                f"job {job_id!r} ({record.status.value}) has no preview yet; one is taken every "
                "few seconds while it runs",
                {"Retry-After": str(RETRY_AFTER_S)} if not record.status.finished else None,
            )
        return png

    async def readiness(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        if self.transport.name != "in-process":
            try:
                await self.store.ping()
                checks["queue"] = {"ok": True, "transport": self.transport.name}
            except StoreUnavailable as exc:
                checks["queue"] = {
                    "ok": False,
                    "transport": self.transport.name,
                    "reason": f"Redis is unreachable: {exc}",
                }
                checks["workers"] = {"ok": False, "reason": "the queue is unreachable"}
                return checks
        checks.update(await self.transport.readiness())
        return checks

    async def close(self) -> None:
        await self.transport.close()
        await self.store.close()
