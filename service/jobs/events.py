"""A job's life as Server-Sent Events: progress while it runs, then its final state.

The API watches the job's record (in memory, or one Redis read per interval), so the stream
is the same on both transports and in any API process. Each change of status or progress is
one ``progress`` event; the final state is one ``end`` event, after which the stream ends. A
comment line every ``heartbeat_s`` keeps proxies from closing a quiet stream, and a stream
lasts at most ``max_s`` (an ``expired`` event, then the end: a client asks again).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from schemas.jobs import JobRead
from service.errors import ApiError
from service.jobs.manager import JobManager
from service.jobs.results import present

RETRY_MS = 2000  # how long an EventSource waits before it reconnects


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _state(job: JobRead[Any, Any]) -> tuple[Any, ...]:
    progress = job.progress.model_dump_json() if job.progress is not None else None
    return (job.status, progress, job.attempts, job.cancel_requested)


async def job_events(
    jobs: JobManager,
    first: JobRead[Any, Any],
    *,
    owner: str,
    poll_s: float,
    heartbeat_s: float,
    max_s: float,
) -> AsyncIterator[str]:
    """The event stream of a job whose first reading is ``first`` (owner checked already)."""
    job = first
    started = last_sent = time.monotonic()
    last: tuple[Any, ...] | None = None
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        now = time.monotonic()
        if _state(job) != last:
            last = _state(job)
            if job.status.finished:
                # The final state, its pictures as URLs: small, whatever the result's size.
                final = present(job, False, 0).model_dump(mode="json")
                yield _event("end", final)
                return
            yield _event("progress", job.model_dump(mode="json", exclude={"result"}))
            last_sent = now
        elif now - last_sent >= heartbeat_s:
            yield ": heartbeat\n\n"
            last_sent = now
        if now - started >= max_s:
            yield _event("expired", {"id": job.id, "after_s": max_s})
            return
        await anyio.sleep(poll_s)
        try:
            job = await jobs.read(job.id, owner)
        except ApiError as exc:  # deleted, expired, or the queue went away
            yield _event("error", {"status": exc.status, "code": exc.code, "detail": exc.detail})
            return
