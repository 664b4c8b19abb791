"""Noticing that a configuration file changed, by polling its metadata (Triton's poll mode).

A stat every ``interval_s`` at the most, from whichever thread asks: no watcher thread, no
inotify (which misses changes on network file systems and in some container volumes).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["DEFAULT_POLL_INTERVAL_S", "Watched", "file_stamp"]

DEFAULT_POLL_INTERVAL_S = 1.0


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced: ``(mtime_ns, size, inode)``; None
    for a file that is not there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class Watched:
    """A file, and whether it changed since :meth:`changed` last said so.

    ``interval_s`` bounds how often the file is looked at (0: every call). The stamp taken
    when the file was read last is given to the constructor, so a change between that read
    and this watch is still seen.
    """

    def __init__(
        self,
        path: Path,
        stamp: tuple[int, int, int] | None,
        interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self.path = path
        self._stamp = stamp
        self._interval_s = interval_s
        self._next = time.monotonic() + interval_s
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """Whether the file changed since the last True (at most one caller gets it)."""
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return False
        try:
            self._next = now + self._interval_s
            stamp = file_stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            return True
        finally:
            self._lock.release()
