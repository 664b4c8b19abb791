"""The callbacks outbox: the callbacks that are due, kept beside the job records.

The final write of a job that has a callback URL (succeeded, failed, cancelled, by a Celery
pool child, the in-process executor or the sweeper) also makes its callback due, in the same
transaction (Redis: the same Lua script; SQLite: the same transaction; memory: under the same
lock), so a process lost right after that write loses no callback. The API's courier
(:mod:`service.jobs.courier`) delivers from the outbox: a slow receiver never holds what runs
jobs, and a delivery due when the API stops is still due when it starts again.

Every backend keeps the same rules:

* a job is added once: a second :meth:`~CallbackOutbox.add` (a redelivered job ending again)
  is ignored, even after the first was delivered;
* :meth:`~CallbackOutbox.claim` takes the due entries under a lease: each is due again only
  ``lease_s`` later, so another API process does not claim it meanwhile; and each claim gets
  a new token (a fence);
* :meth:`~CallbackOutbox.settle` ends a claim (delivered, refused, out of tries) or puts it
  back for a later try, and is ignored when the token is no longer the entry's latest (the
  lease lapsed and another process claimed it).

An API process killed mid-try leaves its claim to lapse: the try is made again, as the
documented at-least-once delivery allows (receivers drop repeats by ``Cnnviz-Delivery``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CallbackOutbox", "Due", "MemoryOutbox"]


@dataclass(frozen=True)
class Due:
    """A claimed callback: the job, the tries made before this one, the claim's fence."""

    job_id: str
    tries: int
    token: int


class CallbackOutbox(Protocol):
    def add(self, job_id: str) -> None:
        """Make the job's callback due now, unless it was added before (the final write
        does this itself; this is the same step on its own)."""

    def claim(self, lease_s: float, limit: int) -> list[Due]:
        """At most ``limit`` due callbacks, each leased for ``lease_s`` seconds."""

    def settle(self, due: Due, retry_in_s: float | None) -> None:
        """End the claim (None) or make it due again in ``retry_in_s`` seconds, with one
        more try counted; nothing when another claim took the entry since."""


@dataclass
class _Entry:
    due_at: float
    tries: int = 0
    token: int = 0
    done: bool = False


class MemoryOutbox:
    """The outbox of :class:`~workers.records.memory.MemoryRecords`: one process, one lock."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._entries.setdefault(job_id, _Entry(due_at=time.time()))

    def claim(self, lease_s: float, limit: int) -> list[Due]:
        now = time.time()
        with self._lock:
            due = [
                (job_id, e) for job_id, e in self._entries.items() if not e.done and e.due_at <= now
            ][:limit]
            for _, entry in due:
                entry.due_at, entry.token = now + lease_s, entry.token + 1
            return [Due(job_id, e.tries, e.token) for job_id, e in due]

    def settle(self, due: Due, retry_in_s: float | None) -> None:
        with self._lock:
            entry = self._entries.get(due.job_id)
            if entry is None or entry.token != due.token:
                return
            if retry_in_s is None:
                entry.done = True
            else:
                entry.due_at, entry.tries = time.time() + retry_in_s, entry.tries + 1

    def forget(self, job_id: str) -> None:
        """Drop a deleted or expired job's entry."""
        with self._lock:
            self._entries.pop(job_id, None)
