"""Whether a running attempt should stop, asked every optimizer step: the backend is read at
most every ``interval_s`` per attempt, and an attempt once stopped stays stopped (shared by the
records whose reads cost a round trip: Redis, SQLite)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["StopChecks"]


class StopChecks:
    """The stop flags of the attempts this process runs."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._checked: dict[tuple[str, int], float] = {}
        self._stopped: set[tuple[str, int]] = set()

    def stop(self, job_id: str, attempt: int) -> None:
        """Note that the attempt must stop (cancelled, superseded, deleted or finished)."""
        self._stopped.add((job_id, attempt))

    def forget(self, job_id: str, attempt: int) -> None:
        """Drop what is known of the attempt (it may run again here)."""
        self._checked.pop((job_id, attempt), None)
        self._stopped.discard((job_id, attempt))

    def __call__(self, job_id: str, attempt: int, read: Callable[[], bool]) -> bool:
        """Whether the attempt must stop; ``read`` asks the backend, when it is due."""
        key = (job_id, attempt)
        if key in self._stopped:
            return True
        now = time.monotonic()
        if now - self._checked.get(key, -float("inf")) < self._interval_s:
            return False
        self._checked[key] = now
        if read():
            self._stopped.add(key)
            return True
        return False
