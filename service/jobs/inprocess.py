"""The in-process transport: jobs run in a few threads of the API process.

The embedded default, for a machine with nothing but the service: the same runner
(:func:`workers.run.execute`, a job's shards one after another), the same records, states,
progress, preview and cancel as with Celery. Bounded: ``workers`` jobs run at once and
``backlog`` more wait; past that a submit is refused (503) rather than queued without limit.

With records in SQLite (:class:`~workers.records.sqlite.SqliteRecords`, the default) jobs
outlive the process: at start (and every ``sweep_interval_s`` after) the transport claims the
jobs no live process holds — those of a process that was killed or stopped — and runs them:
queued ones from the start, running ones from their last checkpoint (saved as ``limits``
say: the same settings as Celery workers').
A thread beats this process's heartbeat into the database, so that processes sharing the data
directory (``uvicorn --workers 2``) leave its jobs alone while it lives. Stopping, it lets its
running jobs stop at their next step and gives them back for the next start. With records in
memory (``CNNVIZ_DATA_DIR=:memory:``) jobs live as long as the process, and stopping cancels
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

import anyio.to_thread

from cnnviz.allocator import release_freed_memory
from schemas.jobs import JobTask
from service.jobs.rounds import every
from service.jobs.transport import QUEUE_RETRY_AFTER_S, QueueFull
from workers.kinds import Resources
from workers.records.memory import MemoryRecords
from workers.records.sqlite import SqliteRecords
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
        records: MemoryRecords | SqliteRecords,
        resources: Resources,
        *,
        workers: int,
        backlog: int,
        limits: Limits,
        nice: int = 0,
        sweep_interval_s: float = 10.0,
        heartbeat_interval_s: float = 5.0,
        job_ttl_seconds: int = 7 * 24 * 3600,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self._records = records
        self._resources = resources
        self._workers = workers
        self._capacity = workers + backlog
        self._limits = limits
        self._sweep_interval_s = sweep_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._ttl = job_ttl_seconds
        self._stop_timeout_s = stop_timeout_s
        self._futures: set[Future[None]] = set()
        self._sweeping: asyncio.Task[None] | None = None
        self._beating = threading.Event()
        self._heart: threading.Thread | None = None
        self.resumed: list[str] = []
        """Ids of the jobs this process took over from one that was gone (tests, logs)."""
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="cnnviz-job",
            initializer=lower_priority,
            initargs=(nice,),
        )
        self._in_flight = 0
        self._lock = threading.Lock()

    async def submit(self, task: JobTask) -> None:
        self._submit(task, bounded=True)

    def _submit(self, task: JobTask, bounded: bool) -> None:
        """Hand ``task`` to the pool; past the capacity a QueueFull, unless not ``bounded``
        (a job taken over from a process that is gone was accepted once already)."""
        with self._lock:
            if bounded and self._in_flight >= self._capacity:
                raise QueueFull(retry_after=QUEUE_RETRY_AFTER_S)
            self._in_flight += 1
        try:
            future = self._executor.submit(self._run, task)
        except RuntimeError:  # shut down
            with self._lock:
                self._in_flight -= 1
            raise QueueFull(retry_after=QUEUE_RETRY_AFTER_S) from None
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    async def start(self) -> None:
        """With persistent records: beat the heartbeat, take over the jobs of processes that
        are gone (an earlier run of this one, most often), and look again every
        ``sweep_interval_s``."""
        if not isinstance(self._records, SqliteRecords):
            return
        records = self._records
        self._heart = threading.Thread(
            target=self._beat, args=(records,), name="cnnviz-heartbeat", daemon=True
        )
        self._heart.start()
        await anyio.to_thread.run_sync(self.sweep)
        if self._sweep_interval_s > 0:
            sweeps = every(
                self._sweep_interval_s,
                self.sweep,
                log,
                "in-process job sweep skipped",
                "in-process job sweep failed",
            )
            self._sweeping = asyncio.get_running_loop().create_task(sweeps)

    def _beat(self, records: SqliteRecords) -> None:
        while not self._beating.wait(self._heartbeat_interval_s):
            try:
                records.heartbeat()
            except Exception:  # a busy or failing disk: try again at the next beat
                log.warning("heartbeat not written", exc_info=True)

    def sweep(self) -> list[str]:
        """Forget expired jobs; run the jobs no live process holds. Their ids."""
        assert isinstance(self._records, SqliteRecords)
        self._records.purge()
        claimed = self._records.claim()
        for record in claimed:
            step = record.progress.step if record.progress is not None else 0
            log.warning(
                "job %s: resumed (%s, %s at step %d, attempt %d so far); its process is gone",
                record.id,
                record.kind,
                record.status.value,
                step,
                record.attempts,
            )
            self.resumed.append(record.id)
            self._submit(record.task(self._ttl), bounded=False)
        if claimed:
            log.warning("resumed %d jobs: %s", len(claimed), ", ".join(r.id for r in claimed))
        return [record.id for record in claimed]

    def _run(self, task: JobTask) -> None:
        try:
            execute(task, self._resources, self._records, self._limits)
        except Exception:  # execute records job errors; this is a bug, keep the thread alive
            log.exception("job %s: unexpected error", task.job_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            release_freed_memory()

    async def readiness(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        return {
            "jobs": {
                "ok": True,
                "transport": self.name,
                "workers": self._workers,
                "in_flight": self._in_flight,
                "capacity": self._capacity,
            }
        }

    def admission(self) -> None:
        return None  # the job runs here: checked against this process's device

    def queue_depth(self) -> int:
        # In flight: running (at most one per worker thread) and waiting.
        return max(0, self._in_flight - self._workers)

    def workers_seen(self) -> int:
        return self._workers

    async def close(self) -> None:
        if not isinstance(self._records, SqliteRecords):
            # Running jobs stop at their next step; queued ones never start.
            self._records.cancel_all()
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        # Running jobs stop at their next step, kept as they are for the next start (with
        # their last checkpoint); queued ones stay queued. Then the jobs are given back.
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        records = self._records
        records.suspend()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await anyio.to_thread.run_sync(self._wait_stopped)
        self._beating.set()
        if self._heart is not None:
            await anyio.to_thread.run_sync(self._heart.join, self._heartbeat_interval_s + 5)
        try:
            await anyio.to_thread.run_sync(records.leave)
        except Exception:  # the next start takes them once the heartbeat has lapsed
            log.exception("jobs not given back")

    def _wait_stopped(self) -> None:
        deadline = time.monotonic() + self._stop_timeout_s
        while self._futures and time.monotonic() < deadline:
            for future in list(self._futures):
                with contextlib.suppress(Exception, CancelledError):
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
