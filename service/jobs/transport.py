"""How a queued job reaches whatever runs it: one interface, two transports.

* :class:`~service.jobs.celery_client.CeleryTransport` sends the task, by name, to the
  ``gpu`` queue in Redis, where Celery workers take it (``CNNVIZ_REDIS_URL`` set);
* :class:`~service.jobs.inprocess.InProcessTransport` runs it in a bounded executor in the
  API process (the default: nothing else to start).
"""

from __future__ import annotations

from typing import Any, Protocol

from schemas.jobs import Admission, JobTask
from service.concurrency import ServiceBusy

QUEUE_RETRY_AFTER_S = 5  # when the queue is down or full


class QueueUnavailable(Exception):
    """The queue cannot take the job now (broker unreachable)."""


class QueueFull(ServiceBusy):
    """The in-process executor has no room for another job (503 busy, like the sync path)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.args = (f"the job queue is full; retry in {retry_after} s",)


class JobTransport(Protocol):
    name: str

    async def start(self) -> None:
        """Start what runs beside the requests (the in-process transport resumes its jobs)."""

    async def submit(self, task: JobTask) -> None:
        """Hand the job over; QueueUnavailable or QueueFull when it cannot be taken."""

    async def readiness(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """Named checks for /readyz, each with ``ok`` and details; ``fresh``: no answer from
        before now (the queue was unreachable since)."""

    def admission(self) -> Admission | None:
        """What a job's size is checked against now (blocking; QueueUnavailable when it
        cannot be known); None: the API's own device, where the job will run."""

    def queue_depth(self) -> int:
        """Jobs waiting for a worker now (may block: called from /metrics, in a thread)."""

    def workers_seen(self) -> int:
        """Workers that take jobs (may block, as above)."""

    async def close(self) -> None: ...
