"""What finished in-process jobs keep, capped in bytes: the parts (result JSON, last preview,
raw tensors) past ``max_result_bytes`` leave memory, oldest first, for files
(:class:`~workers.records.spill.ResultFiles`, themselves capped by ``max_disk_bytes``) or for
nowhere; unfinished jobs are never touched. The base of
:class:`~workers.records.memory.MemoryRecords`, which holds the entries and the lock.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schemas.jobs import JobRecord
from workers.records.errors import ResultExpired
from workers.records.spill import ResultFiles

log = logging.getLogger(__name__)

Overflow = Literal["spill", "evict"]
"""Where a finished job's parts go once the kept bytes pass the cap: to files, or nowhere."""

_PARTS = ("result", "preview", "arrays")


@dataclass
class _Entry:
    record: JobRecord
    expires_at: float
    result: str | None = None
    preview: bytes | None = None
    arrays: bytes | None = None
    # Bytes of the parts counted against the cap (a finished job's, while in memory).
    kept: int = 0
    # Where a finished job's parts are: here, in files, or dropped past the cap.
    place: Literal["memory", "disk", "gone"] = "memory"
    moving: bool = False  # being written to files, outside the lock
    checkpoint: bytes | None = None
    # Per shard of the current attempt: work done, and deliveries.
    shard_done: dict[int, int] = field(default_factory=dict)
    shard_deliveries: dict[int, int] = field(default_factory=dict)


class CappedResults:
    """The kept bytes, the spilled files and the moves between them (the lock held where
    said); subclasses keep ``_entries``, ``_lock`` and the keys freed by :meth:`_free_keys`."""

    _entries: dict[str, _Entry]
    _lock: threading.Lock

    def __init__(
        self,
        max_result_bytes: int | None,
        overflow: Overflow,
        results_dir: Path | None,
        max_disk_bytes: int | None,
    ) -> None:
        self._cap = max_result_bytes
        self._disk_cap = max_disk_bytes
        self._disk = 0  # bytes of spilled parts in files, or reserved for a write under way
        self._spilled: OrderedDict[str, int] = OrderedDict()  # bytes in files, oldest first
        self._files = (
            ResultFiles(results_dir)
            if max_result_bytes is not None and overflow == "spill"
            else None
        )
        self._kept = 0  # bytes of finished jobs' parts in memory
        self._moving = 0  # of which being written to files now
        self._finished: OrderedDict[str, None] = OrderedDict()  # in memory, oldest first

    def _entry(self, job_id: str) -> _Entry:
        raise NotImplementedError

    def _free_keys(self, job_id: str, entry: _Entry | None) -> None:
        raise NotImplementedError

    def _make_room(self, size: int) -> list[str]:
        """Reserve ``size`` bytes of the disk cap, dropping the oldest spilled jobs until they
        fit; returns the dropped jobs, whose files the caller removes off the lock (lock
        held)."""
        self._disk += size
        dropped = []
        while self._disk_cap is not None and self._disk > self._disk_cap and self._spilled:
            job_id, on_disk = self._spilled.popitem(last=False)
            self._disk -= on_disk
            entry = self._entries[job_id]
            entry.place = "gone"
            self._free_keys(job_id, entry)  # a replay or an identical request: a new job
            dropped.append(job_id)
        return dropped

    def _keep(self, job_id: str, entry: _Entry) -> None:
        """Count a job that just finished against the cap."""
        kept = sum(_size(getattr(entry, part)) for part in _PARTS)
        if kept == 0:
            return
        entry.kept = kept
        self._kept += kept
        self._finished[job_id] = None

    def _unkeep(self, job_id: str, entry: _Entry) -> None:
        if job_id in self._finished:
            del self._finished[job_id]
            self._kept -= entry.kept
            if entry.moving:
                self._moving -= entry.kept
        entry.kept = 0

    def _part(self, job_id: str, part: str) -> str | bytes | None:
        """One part of a job, from memory or from its file; ResultExpired once dropped."""
        with self._lock:
            entry = self._entry(job_id)
            if entry.place == "gone":
                raise ResultExpired(job_id)
            if entry.place == "memory" or self._files is None:
                data: str | bytes | None = getattr(entry, part)
                return data
        # Off the lock: a file read must not hold up the other records' callers.
        data = self._files.read(job_id, part)
        if data is None:
            with self._lock:  # its files dropped meanwhile, for room: expired, not empty
                if self._entry(job_id).place == "gone":
                    raise ResultExpired(job_id)
        return data

    @property
    def kept_bytes(self) -> int:
        """Bytes finished jobs keep in memory now (what the cap bounds)."""
        with self._lock:
            return self._kept

    @property
    def disk_bytes(self) -> int:
        """Bytes of spilled parts in files now, with room reserved for writes under way (what
        the disk cap bounds)."""
        with self._lock:
            return self._disk

    @property
    def results_dir(self) -> Path | None:
        """Where spilled parts are written (None: nothing is spilled)."""
        return self._files.directory if self._files is not None else None

    def _enforce_cap(self) -> None:
        """Move the oldest finished jobs' parts out of memory until the rest fit the cap.

        Called by the thread that finished a job: files are written off the lock, so readers
        are never held up by the disk; a part being written stays readable from memory.
        """
        while True:
            with self._lock:
                victim = self._oldest_over_cap()
                if victim is None:
                    return
                job_id, entry = victim
                entry.moving = True
                self._moving += entry.kept
                parts = {
                    part: data.encode() if isinstance(data, str) else data
                    for part in _PARTS
                    if (data := getattr(entry, part)) is not None
                }
                size = sum(len(data) for data in parts.values())
                spill = self._files is not None and (
                    self._disk_cap is None or size <= self._disk_cap
                )
                dropped = self._make_room(size) if spill else []
            stored = False
            if self._files is not None:
                for old in dropped:
                    self._files.remove(old)
                if spill:
                    try:
                        self._files.write(job_id, parts)
                        stored = True
                    except OSError as exc:
                        log.warning("job %s: result not spilled (%s); dropped", job_id, exc)
                else:
                    log.warning(
                        "job %s: result of %d bytes over the disk cap of %s; dropped",
                        job_id,
                        size,
                        self._disk_cap,
                    )
            del parts
            with self._lock:
                if not stored and spill:
                    self._disk -= size  # the reserved room, unused
                if self._entries.get(job_id) is not entry:  # deleted meanwhile
                    if stored and self._files is not None:
                        self._disk -= size
                        self._files.remove(job_id)
                    continue
                entry.moving = False
                self._moving -= entry.kept
                self._unkeep(job_id, entry)
                entry.result = entry.preview = entry.arrays = None
                entry.place = "disk" if stored else "gone"
                if stored:
                    self._spilled[job_id] = size
                else:  # a replay or an identical request makes a new job
                    self._free_keys(job_id, entry)

    def _oldest_over_cap(self) -> tuple[str, _Entry] | None:
        """The oldest finished job still in memory while the kept bytes are over the cap,
        not counting jobs already on their way out (lock held)."""
        if self._cap is None or self._kept - self._moving <= self._cap:
            return None
        for job_id in self._finished:
            entry = self._entries[job_id]
            if not entry.moving:
                return job_id, entry
        return None


def _size(part: str | bytes | None) -> int:
    """Memory a part takes (a str's own size, whatever its characters)."""
    return 0 if part is None else sys.getsizeof(part)
