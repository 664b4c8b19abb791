"""Waiting for a job, written once: follow its event stream, poll where there is none.

:meth:`cnnviz_client.Client.wait` is this; the CLI's ``--wait`` and ``cnnviz wait``, the tests'
job helpers and the viewer's logic follow the same steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from cnnviz_client.errors import ApiError, JobFailed
from schemas.jobs import JobRead, JobStatus

if TYPE_CHECKING:
    from cnnviz_client.client import Client

Until = Callable[[JobRead[Any, Any]], bool]
Show = Callable[[JobRead[Any, Any]], None]


@dataclass(frozen=True)
class JobEvent:
    """One event of ``GET /v1/jobs/{id}/events``: ``progress`` and ``end`` carry the job
    (``end``'s with its result as URLs); ``expired`` and ``error`` their JSON in ``data``; a
    comment (the stream's heartbeat) is an event named ``""``."""

    name: str
    data: str
    job: JobRead[Any, Any] | None = None


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each event of a ``text/event-stream``; ``("", "")`` for each
    comment (a heartbeat), so that the reader gets a turn on a quiet stream."""
    name = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data or name:
                yield name or "message", "\n".join(data)
            name, data = "", []
        elif line.startswith(":"):
            yield "", ""
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


def succeeded(job: JobRead[Any, Any]) -> bool:
    return job.status == JobStatus.SUCCEEDED


def _check_deadline(job_id: str, deadline: float | None, state: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} is still {state}")


def wait(
    client: Client,
    job_id: str,
    *,
    until: Until = succeeded,
    progress: bool | Show = False,
    timeout: float | None = None,
    poll_s: float = 0.5,
    stream: bool = True,
) -> JobRead[Any, Any]:
    """The first reading of the job for which ``until`` holds (by default: it succeeded).

    ``JobFailed`` when the job ends without it; ``TimeoutError`` after ``timeout`` seconds;
    ``ApiError`` for an unknown job. Follows the job's event stream; where the stream cannot
    be had or breaks off, and with ``stream=False``, polls every ``poll_s`` seconds.
    ``progress``: ``True`` draws a bar on stderr (tqdm); a callable gets each reading.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if progress is True:
        from tqdm import tqdm

        # No total until the job's first reading gives it (a bar of "0/1" would be made up).
        bar = tqdm(total=None, unit="step", desc=f"job {job_id[:8]}", leave=True)

    def show(job: JobRead[Any, Any]) -> None:
        if callable(progress):
            progress(job)
        if bar is not None and job.progress is not None:
            bar.total = job.progress.total
            bar.n = job.progress.step
            bar.set_postfix_str(job.status.value, refresh=False)
            bar.refresh()

    try:
        job = _follow(client, job_id, until, show, deadline) if stream else None
        if job is None:
            job = _poll(client, job_id, until, show, deadline, poll_s)
    finally:
        if bar is not None:
            bar.close()
    if not until(job):
        raise JobFailed(job)
    return job


def _poll(
    client: Client, job_id: str, until: Until, show: Show, deadline: float | None, poll_s: float
) -> JobRead[Any, Any]:
    """Read the job every ``poll_s`` seconds until ``until`` holds or it ends."""
    while True:
        job = client.job(job_id)
        show(job)
        if until(job) or job.status.finished:
            return job
        _check_deadline(job_id, deadline, job.status.value)
        time.sleep(poll_s)


def _follow(
    client: Client, job_id: str, until: Until, show: Show, deadline: float | None
) -> JobRead[Any, Any] | None:
    """The job once ``until`` holds or it ended, from its event stream; None where the stream
    could not be followed that far (the caller polls instead). A stream that lasted its
    longest (``expired``) is opened again."""
    while True:
        _check_deadline(job_id, deadline, "not finished")
        read_s = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            for event in client.events(job_id, read_timeout=read_s):
                if event.name == "progress" and event.job is not None:
                    show(event.job)
                    if until(event.job):
                        return event.job
                elif event.name == "end":
                    job = client.job(job_id)  # with its result, as a read gives it
                    show(job)
                    return job
                elif event.name == "expired":
                    break  # open it again
                elif event.name == "error":
                    return None  # gone or unreadable now: a read tells how
                _check_deadline(job_id, deadline, "not finished")
            else:
                return None  # ended without its end event
        except ApiError:  # no such job, or no streams here: a read tells which
            return None
        except httpx.ReadTimeout:
            _check_deadline(job_id, deadline, "not finished")
            return None
        except httpx.TransportError:
            return None
