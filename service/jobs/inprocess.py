"""The in-process transport: jobs run in a few threads of the API process.

The embedded default, for a machine with nothing but the service: the same runner
(:func:`workers.run.execute`, a job's shards one after another), the same records, states,
progress, preview and cancel as with Celery. Bounded: ``workers`` jobs run at once and
``backlog`` more wait; past that a submit is refused (503) rather than queued without limit.
Jobs live as long as the process.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cnnviz.allocator import release_freed_memory
from schemas.jobs import JobTask
from service.jobs.transport import QUEUE_RETRY_AFTER_S, QueueFull
from workers.kinds import Resources
from workers.records.memory import MemoryRecords
from workers.run import Limits, execute

log = logging.getLogger(__name__)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's scheduling priority by ``nice`` (Linux: niceness is per
    thread, and the OpenMP threads it starts later inherit it).

    A job thread runs at this lower priority so that a core a synchronous request wants
    goes to that request first: beside feature-map traffic a job takes what the requests
    leave, and alone it still has every core. Raising it back would need privileges, which
    is why only the job threads, for their whole life, are lowered.
    """
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:  # no per-thread priority here: run as we are
        log.warning("in-process job threads keep their priority: %s", exc)


class InProcessTransport:
    """A :class:`~service.jobs.transport.JobTransport` on a thread pool."""

    name = "in-process"

    def __init__(
        self,
        records: MemoryRecords,
        resources: Resources,
        *,
        workers: int,
        backlog: int,
        limits: Limits,
        nice: int = 0,
    ) -> None:
        self._records = records
        self._resources = resources
        self._workers = workers
        self._capacity = workers + backlog
        self._limits = limits
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="cnnviz-job",
            initializer=lower_priority,
            initargs=(nice,),
        )
        self._in_flight = 0
        self._lock = threading.Lock()

    async def submit(self, task: JobTask) -> None:
        with self._lock:
            if self._in_flight >= self._capacity:
                raise QueueFull(retry_after=QUEUE_RETRY_AFTER_S)
            self._in_flight += 1
        try:
            self._executor.submit(self._run, task)
        except RuntimeError:  # shut down
            with self._lock:
                self._in_flight -= 1
            raise QueueFull(retry_after=QUEUE_RETRY_AFTER_S) from None

    def _run(self, task: JobTask) -> None:
        try:
            execute(task, self._resources, self._records, self._limits)
        except Exception:  # execute records job errors; this is a bug, keep the thread alive
            log.exception("job %s: unexpected error", task.job_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            release_freed_memory()

    async def readiness(self) -> dict[str, dict[str, Any]]:
        return {
            "jobs": {
                "ok": True,
                "transport": self.name,
                "workers": self._workers,
                "in_flight": self._in_flight,
                "capacity": self._capacity,
            }
        }

    def queue_depth(self) -> int:
        # In flight: running (at most one per worker thread) and waiting.
        return max(0, self._in_flight - self._workers)

    def workers_seen(self) -> int:
        return self._workers

    async def close(self) -> None:
        # Running jobs stop at their next step; queued ones never start.
        self._records.cancel_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
