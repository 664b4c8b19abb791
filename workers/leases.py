"""A running job's lease, renewed in a thread of the worker that runs it.

The heartbeat is a thread, not a call per optimization step: one step of a large model may
take longer than the lease, and a step that is slow is not a worker that is lost. What the
lease detects is the process (or its machine) going away: then nothing renews it, it lapses,
and the API's sweeper sends the job again (:mod:`service.jobs.sweeper`). A worker whose lease
was taken from it (it stalled past the lease; another attempt runs the job now) learns it at
its next renewal and stops at its next step.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType

from workers.records import JobRecords

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LeaseKeeper:
    """Renew ``job_id``'s lease (of ``shard``, for one shard of several) every ``interval_s``
    while the ``with`` block runs; :attr:`lost` once the attempt no longer holds it."""

    records: JobRecords
    job_id: str
    attempt: int
    interval_s: float
    shard: int | None = None

    def __post_init__(self) -> None:
        self._done = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.job_id}", daemon=True)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                held = self.records.renew(self.job_id, self.attempt, self.shard)
            except Exception:  # a renewal that failed is retried at the next interval
                log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)
                continue
            if not held:
                log.warning("job %s: attempt %d lost its lease", self.job_id, self.attempt)
                self._lost.set()
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval_s + 5)
