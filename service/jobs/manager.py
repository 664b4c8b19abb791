"""The job use cases behind the routes, for every kind: submit, read, cancel, delete, preview.

Errors leave here as :class:`~service.errors.ApiError` with the status and code the API
documents; core errors (unknown model or layer, a channel out of range) pass through to the
one mapping in :mod:`service.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel

from cnnviz.errors import InvalidArgumentError
from schemas.jobs import JobList, JobRead, JobRecord, JobStatus, JobTask, fingerprint
from service.concurrency import TorchPool
from service.errors import ApiError
from service.jobs.callbacks import CallbackHosts
from service.jobs.courier import CallbackCourier
from service.jobs.pages import decode_token, encode_token
from service.jobs.sweeper import LeaseSweeper
from service.jobs.transport import (
    QUEUE_RETRY_AFTER_S,
    JobTransport,
    QueueFull,
    QueueUnavailable,
)
from workers.kinds import JobKind, Resources, get_kind
from workers.records import (
    Conditions,
    Idempotency,
    IdempotencyConflict,
    JobFilter,
    JobNotFinished,
    JobNotFound,
    JobRecords,
    QuotaExceeded,
    RecordsUnavailable,
    ResultExpired,
)
from workers.records.verdicts import VerdictTable

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # polling an unfinished job
QUOTA_RETRY_AFTER_S = 10  # an owner at its quota: about when one of its jobs may be done
# A result JSON up to this size is parsed on the event loop (well under a millisecond);
# a larger one in a worker thread.
_PARSE_ON_LOOP_BYTES = 256 * 1024


class Submitted(StrEnum):
    """What a submission did: queued a new job, or answered with an earlier one."""

    CREATED = "created"
    REPLAYED = "replayed"  # the job of an Idempotency-Key seen before
    REUSED = "reused"  # the succeeded job of an identical request: jobs are deterministic


def _unavailable(reason: str) -> ApiError:
    return ApiError(
        503,
        "queue_unavailable",
        f"the job queue is unavailable ({reason}); jobs cannot be submitted or read now, "
        "feature maps still work; retry later",
        {"Retry-After": str(QUEUE_RETRY_AFTER_S)},
    )


def _not_found(job_id: str) -> ApiError:
    return ApiError(
        404, "unknown_job", f"unknown job {job_id!r}: never created, deleted, or expired"
    )


def _expired(job_id: str) -> ApiError:
    return ApiError(
        410,
        "result_expired",
        f"job {job_id!r} finished, but its result was dropped to keep the results under "
        "their byte cap (CNNVIZ_INPROCESS_RESULTS_MAX_BYTES in memory, "
        "CNNVIZ_INPROCESS_RESULTS_DISK_MAX_BYTES on disk, CNNVIZ_REDIS_RESULTS_MAX_BYTES in "
        "Redis; the oldest results go first); "
        "submit the request again: the same seed and settings give the same result",
    )


def _not_succeeded(job_id: str, status: JobStatus, then: str) -> ApiError:
    """409 for a job read before it has succeeded (``then``: what happens once it has), with
    Retry-After while it may still succeed."""
    waiting = status in (JobStatus.QUEUED, JobStatus.RUNNING)
    return ApiError(
        409,
        "job_not_succeeded",
        f"job {job_id!r} is {status.value}; {then}",
        {"Retry-After": "1"} if waiting else None,
    )


def _not_finished(exc: JobNotFinished, job_id: str) -> ApiError:
    return ApiError(
        409,
        "job_not_finished",
        f"job {job_id!r} is {exc.record.status.value}; cancel it "
        f"(POST /v1/jobs/{job_id}/cancel) and delete it once it has stopped",
    )


def _quota(exc: QuotaExceeded, _: str) -> ApiError:
    return ApiError(
        429,
        "quota_exceeded",
        f"you have {exc.active} jobs queued or running, the most one caller may have "
        "(CNNVIZ_MAX_ACTIVE_JOBS_PER_OWNER); wait for one to finish, or cancel one",
        {"Retry-After": str(QUOTA_RETRY_AFTER_S)},
    )


def _reused_key(_: IdempotencyConflict, __: str) -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request; use a new key for a new request",
    )


# The records' errors as the API answers them, in one place: (error, its answer for a job id).
_RECORDS_ERRORS: list[tuple[type[Exception], Callable[[Any, str], ApiError]]] = [
    (JobNotFound, lambda _, job_id: _not_found(job_id)),
    (ResultExpired, lambda _, job_id: _expired(job_id)),
    (RecordsUnavailable, lambda exc, _: _unavailable(str(exc))),
    (JobNotFinished, _not_finished),
    (QuotaExceeded, _quota),
    (IdempotencyConflict, _reused_key),
]


def _persistence(appendonly: bool | None) -> dict[str, Any]:
    """What /readyz says of Redis persistence: without an append-only file a restart loses
    the queued jobs and the records (they then read as never created)."""
    if appendonly is None:
        return {"appendonly": "unknown"}
    if appendonly:
        return {"appendonly": "yes"}
    return {
        "appendonly": "no",
        "warning": "Redis runs without persistence (appendonly no): a restart loses queued "
        "jobs and job records; run it with --appendonly yes",
    }


@dataclasses.dataclass(eq=False)
class JobManager:
    """Submits jobs of every kind through a transport and keeps their records.

    ``ttl_seconds``: how long a finished job's record lives; ``max_active``: the queued and
    running jobs one owner may have (None: no bound); ``inline_max_bytes``: base64
    characters of pictures a job's JSON carries inline by default; ``callbacks``: the hosts
    a job's callback_url may name; ``sweeper``: sends again the jobs whose worker was lost
    (queued transports); ``courier``: delivers the callbacks of jobs that ended;
    ``on_ended``: runs after a cancel ended a running job at once (its worker was lost)."""

    records: JobRecords
    transport: JobTransport
    resources: Resources
    pool: TorchPool
    ttl_seconds: int
    max_active: int | None = None
    _: dataclasses.KW_ONLY
    inline_max_bytes: int = 256 * 1024
    callbacks: CallbackHosts = CallbackHosts(frozenset())  # noqa: RUF009 (frozen)
    sweeper: LeaseSweeper | None = None
    courier: CallbackCourier | None = None
    on_ended: Callable[[JobTask], None] | None = None
    _loops: list[asyncio.Task[None]] = dataclasses.field(default_factory=list, init=False)
    _queue_was_down: bool = dataclasses.field(default=False, init=False)

    async def start(self) -> None:
        """Start what runs beside the requests: the transport's (in-process: the jobs it
        resumes), the lease sweeper and the callback courier, when there are."""
        await self.transport.start()
        loop = asyncio.get_running_loop()
        if self.sweeper is not None and self.sweeper.interval_s > 0:
            self._loops.append(loop.create_task(self.sweeper.run()))
        if self.courier is not None:
            self._loops.append(loop.create_task(self.courier.run()))

    async def _raw(self, call: Callable[..., T], *args: Any) -> T:
        """Call the records: in a thread when they do I/O (Redis), else right here."""
        if self.records.blocking:
            return await anyio.to_thread.run_sync(functools.partial(call, *args))
        return call(*args)

    async def _io(self, call: Callable[..., T], *args: Any, job: str = "") -> T:
        """Call the records; their errors leave as the API's answers (``job``: the id the
        call is about)."""
        try:
            return await self._raw(call, *args)
        except tuple(error for error, _ in _RECORDS_ERRORS) as exc:
            answer = next(answer for error, answer in _RECORDS_ERRORS if isinstance(exc, error))
            raise answer(exc, job) from exc

    async def submit(
        self,
        kind_name: str,
        model: str,
        request: BaseModel,
        idempotency_key: str | None,
        *,
        owner: str,
        reuse: bool = True,
    ) -> tuple[JobRead[Any, Any], Submitted]:
        """Validate, record and queue a job of a kind for ``owner``; the job and what the
        submission did.

        Everything is scoped by ``owner`` (see :func:`service.deps.get_owner`): an idempotency
        key is looked up among its keys, and with ``reuse`` and no idempotency key, a request
        identical to one of its jobs that succeeded (same model and weights, same resolved
        settings and seed) is answered with that job: jobs are deterministic. An owner with
        ``max_active`` queued or running jobs gets a 429.
        """
        kind = get_kind(kind_name)
        spec = self.resources.models.spec(model)  # UnknownModelError before any work
        # The callback is no part of the job's identity: the kind's request is without it.
        callback_url = getattr(request, "callback_url", None)
        if callback_url is not None:
            self.callbacks.check(callback_url)
        request = kind.request_type.model_validate(request.model_dump(exclude={"callback_url"}))
        referenced = await self._referenced(kind, request, owner)
        try:
            admission = await anyio.to_thread.run_sync(self.transport.admission)
        except QueueUnavailable as exc:
            raise _unavailable(str(exc)) from exc
        # Checked against the device that will run it: a worker's, not this process's.
        resources = dataclasses.replace(self.resources, admission=admission)

        def validate() -> tuple[BaseModel, str | None]:
            prepared = kind.prepare(request, model, resources)
            prepared = kind.link(prepared, model, referenced, resources)
            # The digest of the weights file is read once per version of the file.
            return prepared, self.resources.models.weights_digest(model)

        resolved, weights_sha256 = await self.pool.run(validate)
        for job in referenced.values():
            if job.weights_sha256 != weights_sha256:
                raise ApiError(
                    409,
                    "weights_changed",
                    f"job {job.id!r} ran on other weights of model {model!r} than it has "
                    "now; run it again on these weights",
                )
        identity = f"{owner}\0{fingerprint(kind.name, model, resolved)}\0{spec!r}"
        request_digest = hashlib.sha256(f"{identity}\0{weights_sha256}".encode()).hexdigest()
        # An Idempotency-Key asks for that key's job: reuse answers only requests without one.
        if reuse and idempotency_key is None:
            earlier = await self._succeeded(request_digest, owner)
            if earlier is not None:
                return earlier, Submitted.REUSED
        idempotency = None
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{owner}\0{idempotency_key}".encode()).hexdigest()
            idempotency = Idempotency(digest, fingerprint(kind.name, model, request))
        record = JobRecord(
            id=uuid.uuid4().hex,
            kind=kind.name,
            model=model,
            status=JobStatus.QUEUED,
            request=resolved.model_dump(mode="json"),
            created_at=time.time(),
            callback_url=callback_url,
            owner=owner,
            weights_sha256=weights_sha256,
            admission=admission,
        )
        record, created = await self._io(
            self.records.create, record, self.ttl_seconds, Conditions(idempotency, self.max_active)
        )
        if not created:
            return await self.read(record.id, owner), Submitted.REPLAYED
        task = record.task(self.ttl_seconds)
        try:
            await self.transport.submit(task)
        except (QueueUnavailable, QueueFull) as exc:
            # Without Redis the record cannot be removed; it expires with its TTL.
            with contextlib.suppress(ApiError):  # without Redis, nothing to discard
                await self._io(self.records.discard, record.id)
            if isinstance(exc, QueueFull):
                raise  # a ServiceBusy: 503 busy with Retry-After, as on the sync path
            raise _unavailable(str(exc)) from exc
        with contextlib.suppress(ApiError):  # Redis gone: only reuse is lost
            await self._io(self.records.remember, request_digest, record.id, self.ttl_seconds)
        return record.read(), Submitted.CREATED

    async def verdicts(self, model: str) -> VerdictTable:
        """The sanity-check verdicts kept for the weights ``model`` runs now: none where they
        have no digest, or while the records cannot be reached (an attribution is answered
        all the same, its status unknown)."""
        weights = await anyio.to_thread.run_sync(self.resources.models.weights_digest, model)
        if weights is None:
            return {}
        try:
            return await self._raw(self.records.verdicts, model, weights)
        except RecordsUnavailable as exc:
            log.warning("sanity verdicts of %s unread: %s", model, exc)
            return {}

    async def _succeeded(self, request_digest: str, owner: str) -> JobRead[Any, Any] | None:
        """The latest job of this request, if it succeeded and is still kept."""
        job_id = await self._io(self.records.recall, request_digest)
        if job_id is None:
            return None
        try:
            job = await self.read(job_id, owner)
        except ApiError as exc:
            if exc.status in (404, 410):
                return None
            raise
        return job if job.status == JobStatus.SUCCEEDED else None

    async def _record(self, job_id: str, owner: str) -> JobRecord:
        """The record, for its owner only: to anyone else a job is unknown (404, never 403,
        which would confirm that the id exists)."""
        record = await self._io(self.records.get, job_id, job=job_id)
        if not hmac.compare_digest(record.owner, owner):
            raise _not_found(job_id)
        return record

    async def owned(
        self, owner: str, chosen: JobFilter, page_size: int, page_token: str | None
    ) -> JobList:
        """A page of ``owner``'s jobs, newest first; 422 for a page token not of ours."""
        before = decode_token(page_token) if page_token else None
        records = await self._io(self.records.owned, owner, chosen, before, page_size + 1)
        page = records[:page_size]
        more = len(records) > page_size
        token = encode_token((page[-1].created_at, page[-1].id)) if more else None
        return JobList(jobs=[record.read(None) for record in page], next_page_token=token)

    async def read(self, job_id: str, owner: str) -> JobRead[Any, Any]:
        record, result = await self.result(job_id, owner)
        return record.read(result)

    async def succeeded(self, job_id: str, owner: str, kind: str, pictures: str) -> BaseModel:
        """The result of ``owner``'s succeeded job of ``kind``, whose ``pictures`` a route
        draws: 422 for a job of another kind, 409 (with Retry-After while it may still
        succeed) for one that has not succeeded."""
        record, result = await self.result(job_id, owner)
        if record.kind != kind:
            raise InvalidArgumentError(
                f"job {job_id!r} is a {record.kind} job; {pictures} are for {kind} jobs"
            )
        if result is None:
            raise _not_succeeded(
                job_id, record.status, f"its {pictures} are drawn once it has succeeded"
            )
        return result

    async def _referenced(
        self, kind: JobKind[Any, Any], request: BaseModel, owner: str
    ) -> dict[str, JobRead[Any, Any]]:
        """The earlier jobs of ``owner`` that ``request`` reads (``kind.references``), with
        their results: 404 for an unknown id or another owner's (as everywhere), 422 for a job
        of a kind the field does not take, 409 for one that has not succeeded."""
        found: dict[str, JobRead[Any, Any]] = {}
        for job_id, reference in kind.references(request).items():
            job = await self.read(job_id, owner)
            if job.kind not in reference.kinds:
                raise InvalidArgumentError(
                    f"`{reference.field}` names job {job_id!r}, a {job.kind} job; it takes "
                    f"{' or '.join(reference.kinds)} jobs (see GET /v1/jobs?kind=...)"
                )
            if job.result is None:
                raise _not_succeeded(
                    job_id, job.status, f"`{reference.field}` reads it once it has succeeded"
                )
            found[job_id] = job
        return found

    async def result(self, job_id: str, owner: str) -> tuple[JobRecord, BaseModel | None]:
        """The record and, once it has succeeded, its result as its kind's model."""
        record = await self._record(job_id, owner)
        if record.status != JobStatus.SUCCEEDED:
            return record, None
        raw = await self._io(self.records.result, job_id, job=job_id)
        if raw is None:
            return record, None
        parse = get_kind(record.kind).result_type.model_validate_json
        if len(raw) <= _PARSE_ON_LOOP_BYTES:
            return record, parse(raw)
        # A whole layer's result is tens of MB of JSON: parsed here it would stall every
        # other request for the second it takes.
        return record, await anyio.to_thread.run_sync(parse, raw)

    async def cancel(self, job_id: str, owner: str) -> JobRead[Any, Any]:
        before = await self._record(job_id, owner)  # the owner never changes: no race here
        record = await self._io(self.records.cancel, job_id, job=job_id)
        if record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise ApiError(
                409,
                "job_finished",
                f"job {job_id!r} has already {record.status.value}; there is nothing to cancel",
            )
        if (
            before.status == JobStatus.RUNNING
            and record.status == JobStatus.CANCELLED
            and self.on_ended is not None
        ):
            # Its lease had lapsed: the cancel ended it here, and nothing else will say so.
            await anyio.to_thread.run_sync(self.on_ended, record.task(self.ttl_seconds))
        return record.read()

    async def delete(self, job_id: str, owner: str) -> None:
        await self._record(job_id, owner)
        await self._io(self.records.delete, job_id, job=job_id)

    async def preview(self, job_id: str, owner: str) -> bytes:
        """The latest preview; a succeeded job's preview is its result grid."""
        record = await self._record(job_id, owner)
        if record.status == JobStatus.SUCCEEDED:
            _, result = await self.result(job_id, owner)
            pictures = get_kind(record.kind).pictures(result) if result is not None else None
            if pictures is not None:
                return pictures.grid_png()
        png = await self._io(self.records.preview, job_id, job=job_id)
        if png is None:
            raise ApiError(
                404,
                "no_preview",
                f"job {job_id!r} ({record.status.value}) has no preview yet; one is taken every "
                "few seconds while it runs",
                {"Retry-After": str(RETRY_AFTER_S)} if not record.status.finished else None,
            )
        return png

    async def arrays(self, job_id: str) -> bytes | None:
        """The raw tensors a job attached (read the job first: that checks who may)."""
        return await self._io(self.records.arrays, job_id, job=job_id)

    async def readiness(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        if self.transport.name != "in-process":
            try:
                await self._raw(self.records.ping)
                checks["queue"] = {"ok": True, "transport": self.transport.name}
                checks["queue"].update(_persistence(await self._raw(self.records.appendonly)))
            except RecordsUnavailable as exc:
                checks["queue"] = {
                    "ok": False,
                    "transport": self.transport.name,
                    "reason": f"Redis is unreachable: {exc}",
                }
                checks["workers"] = {"ok": False, "reason": "the queue is unreachable"}
                self._queue_was_down = True
                return checks
        # Back from an outage: what the workers said before it says nothing now.
        fresh, self._queue_was_down = self._queue_was_down, False
        checks.update(await self.transport.readiness(fresh=fresh))
        return checks

    async def close(self) -> None:
        for running in self._loops:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        if self.courier is not None:
            await anyio.to_thread.run_sync(self.courier.close)
        await self.transport.close()
        await self._io(self.records.close)
