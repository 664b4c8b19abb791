"""Job records in the API process, for the in-process transport.

The transitions of :class:`~workers.records.base.JobRecords` under one lock: the API's event
loop reads and cancels, executor threads start, report and finish. Records expire like Redis
keys: ``ttl`` after creation, and again ``ttl`` after the job finishes.

What finished jobs keep (result JSON, last preview, raw tensors) may be capped in bytes: past
``max_result_bytes``, the oldest finished jobs' parts leave memory, oldest first, and unfinished
jobs are never touched. With ``overflow="spill"`` they go to files
(:class:`~workers.records.spill.ResultFiles`) and read back through the same methods; with
``"evict"`` (or when a file cannot be written) they are dropped, and reading them raises
:class:`~workers.records.errors.ResultExpired`. Either way the small record stays until its TTL.
The files are capped too (``max_disk_bytes``): room for a job's parts is made by dropping the
oldest spilled jobs' files first, and parts larger than the whole disk cap are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from schemas.jobs import JobError, JobRecord, JobStatus, Progress
from workers.records.base import (
    NO_CONDITIONS,
    Conditions,
    Cursor,
    Ending,
    JobFilter,
    ShardStart,
    lost_error,
    newest_first,
)
from workers.records.errors import IdempotencyConflict, JobNotFinished, JobNotFound, QuotaExceeded
from workers.records.memory_cap import CappedResults, Overflow, _Entry
from workers.records.outbox import MemoryOutbox
from workers.records.stats import Durations
from workers.records.verdicts import Verdict

log = logging.getLogger(__name__)


class MemoryRecords(CappedResults):
    """:class:`~workers.records.base.JobRecords` in memory, for one process."""

    blocking = False

    def __init__(
        self,
        ttl_seconds: int,
        *,
        max_result_bytes: int | None = None,
        overflow: Overflow = "spill",
        results_dir: Path | None = None,
        max_disk_bytes: int | None = None,
    ) -> None:
        """``max_result_bytes``: the most bytes finished jobs keep in memory (None: no cap);
        ``overflow``: what happens past it; ``results_dir``: where spilled parts go (None: a
        temporary directory, removed on :meth:`close`); ``max_disk_bytes``: the most bytes
        the spilled parts may take there (None: no cap)."""
        super().__init__(max_result_bytes, overflow, results_dir, max_disk_bytes)
        self._ttl = ttl_seconds
        self._entries: dict[str, _Entry] = {}
        self._idempotency: dict[str, tuple[str, str]] = {}  # digest -> (job id, fingerprint)
        self._latest: dict[str, str] = {}  # request digest -> its latest job id
        self._digest_of: dict[str, str] = {}  # job id -> its request digest
        self._blobs: dict[str, tuple[float, bytes]] = {}  # sha256 -> (expires at, bytes)
        self._durations: dict[tuple[str, str], Durations] = {}
        # (model, weights) -> (method, layer) -> passed: kept for the process's life.
        self._verdicts: dict[tuple[str, str], dict[tuple[str, str], bool]] = {}
        self._lock = threading.Lock()
        self.callbacks = MemoryOutbox()

    # ---- helpers (call with the lock held) ----

    def _purge(self) -> None:
        now = time.time()
        for job_id in [j for j, e in self._entries.items() if e.expires_at <= now]:
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self._unkeep(job_id, entry)
            self.callbacks.forget(job_id)
            if entry.place == "disk" and self._files is not None:
                self._disk -= self._spilled.pop(job_id, 0)
                self._files.remove(job_id)
        self._free_keys(job_id, entry)

    def _free_keys(self, job_id: str, entry: _Entry | None) -> None:
        """Forget the idempotency key and the request digest that lead to ``job_id``."""
        idem = entry.record.idem if entry is not None else None
        # A key freed by an eviction may lead to a newer job since: leave that one alone.
        if idem is not None and self._idempotency.get(idem, ("",))[0] == job_id:
            del self._idempotency[idem]
        digest = self._digest_of.pop(job_id, None)
        if digest is not None and self._latest.get(digest) == job_id:
            del self._latest[digest]

    def _entry(self, job_id: str) -> _Entry:
        entry = self._entries.get(job_id)
        if entry is None or entry.expires_at <= time.time():
            raise JobNotFound(job_id)
        return entry

    def _update(self, entry: _Entry, **changes: object) -> None:
        entry.record = entry.record.model_copy(update=changes)

    # ---- the API's side ----

    def create(
        self, record: JobRecord, ttl_seconds: int, conditions: Conditions = NO_CONDITIONS
    ) -> tuple[JobRecord, bool]:
        idempotency, max_active = conditions.idempotency, conditions.max_active
        with self._lock:
            self._purge()
            if idempotency is not None:
                known = self._idempotency.get(idempotency.digest)
                if known is not None and known[0] in self._entries:
                    if known[1] != idempotency.fingerprint:
                        raise IdempotencyConflict(idempotency.digest)
                    return self._entries[known[0]].record, False
            if max_active is not None:
                active = sum(
                    1
                    for entry in self._entries.values()
                    if entry.record.owner == record.owner and not entry.record.status.finished
                )
                if active >= max_active:
                    raise QuotaExceeded(record.owner, active)
            if idempotency is not None:
                self._idempotency[idempotency.digest] = (record.id, idempotency.fingerprint)
                record = record.model_copy(update={"idem": idempotency.digest})
            self._entries[record.id] = _Entry(record, time.time() + ttl_seconds)
            return record, True

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._entry(job_id).record

    def owned(
        self, owner: str, chosen: JobFilter, before: Cursor | None, limit: int
    ) -> list[JobRecord]:
        now = time.time()
        with self._lock:
            mine = [
                e.record
                for e in self._entries.values()
                if e.record.owner == owner and e.expires_at > now
            ]
        return newest_first(mine, chosen, before, limit)

    def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        # Forgotten with the job's record (see _forget).
        with self._lock:
            self._latest[digest] = job_id
            self._digest_of[job_id] = digest

    def recall(self, digest: str) -> str | None:
        with self._lock:
            self._purge()
            return self._latest.get(digest)

    def put_blob(self, digest: str, data: bytes, ttl_seconds: int) -> None:
        now = time.time()
        with self._lock:
            self._blobs = {d: kept for d, kept in self._blobs.items() if kept[0] > now}
            self._blobs[digest] = (now + ttl_seconds, data)

    def blob(self, digest: str) -> bytes | None:
        with self._lock:
            expires_at, data = self._blobs.get(digest, (0.0, None))
        return data if expires_at > time.time() else None

    def result(self, job_id: str) -> str | None:
        data = self._part(job_id, "result")
        return data.decode() if isinstance(data, bytes) else data

    def preview(self, job_id: str) -> bytes | None:
        data = self._part(job_id, "preview")
        assert not isinstance(data, str)
        return data

    def arrays(self, job_id: str) -> bytes | None:
        data = self._part(job_id, "arrays")
        assert not isinstance(data, str)
        return data

    def attach(self, job_id: str, attempt: int, data: bytes, ttl_seconds: int) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
            if (
                entry is not None
                and entry.record.attempts == attempt
                and not entry.record.status.finished
            ):
                entry.arrays = data

    def cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            entry = self._entry(job_id)
            self._ask_cancel(entry)
            return entry.record

    def delete(self, job_id: str) -> None:
        with self._lock:
            entry = self._entry(job_id)
            if not entry.record.status.finished:
                raise JobNotFinished(entry.record)
            self._forget(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._forget(job_id)

    def keep_verdicts(self, model: str, weights: str, verdicts: list[Verdict]) -> None:
        with self._lock:
            table = self._verdicts.setdefault((model, weights), {})
            table.update({(v.method, v.layer): v.passed for v in verdicts})

    def verdicts(self, model: str, weights: str) -> dict[tuple[str, str], bool]:
        with self._lock:
            return dict(self._verdicts.get((model, weights), {}))

    def ping(self) -> None:
        return None

    def appendonly(self) -> bool | None:
        return False  # records live as long as the process

    def close(self) -> None:
        if self._files is not None:
            self._files.close()

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            self._purge()
            counts: dict[tuple[str, str], int] = {}
            for entry in self._entries.values():
                key = (entry.record.kind, entry.record.status.value)
                counts[key] = counts.get(key, 0) + 1
            return counts

    def observe_duration(self, kind: str, status: JobStatus, seconds: float) -> None:
        with self._lock:
            self._durations.setdefault((kind, status.value), Durations()).observe(seconds)

    def durations(self) -> dict[tuple[str, str], Durations]:
        with self._lock:
            return {key: Durations(list(d.counts), d.sum) for key, d in self._durations.items()}

    def cancel_all(self) -> None:
        """Cancel every unfinished job (the process is shutting down)."""
        with self._lock:
            for entry in self._entries.values():
                self._ask_cancel(entry)

    def _ask_cancel(self, entry: _Entry) -> None:
        """Flag an unfinished job; a queued one is cancelled at once (lock held)."""
        status = entry.record.status
        if not status.finished:
            self._update(entry, cancel=True)
            if status == JobStatus.QUEUED:
                self._close(entry, Ending(JobStatus.CANCELLED))

    def _close(self, entry: _Entry, ending: Ending, ttl_seconds: int | None = None) -> None:
        """Finish the record as ``ending`` says (status, result, error); it lives
        ``ttl_seconds`` (default: the store's TTL) from now. Its callback, if it has one, is
        due (under the records' lock, as the final write)."""
        now = time.time()
        entry.result = ending.result  # before _keep, which counts it against the cap
        self._update(entry, status=ending.status, finished_at=now, error=ending.error)
        entry.expires_at = now + (self._ttl if ttl_seconds is None else ttl_seconds)
        if entry.record.callback_url is not None:
            self.callbacks.add(entry.record.id)
        self._keep(entry.record.id, entry)

    # ---- the executor's side (workers.run.Recorder) ----

    def start(self, job_id: str, holder: str = "") -> int | None:
        # One process: the executor that starts a job is the one that runs it, so there is
        # no lease to hold (a lost process loses its records with it).
        with self._lock:
            try:
                entry = self._entry(job_id)
            except JobNotFound:
                return None
            record = entry.record
            if record.status.finished:
                return None
            if record.cancel:
                self._close(entry, Ending(JobStatus.CANCELLED))
                return None
            attempt = record.attempts + 1
            self._update(
                entry,
                status=JobStatus.RUNNING,
                attempts=attempt,
                started_at=record.started_at or time.time(),
            )
            entry.shard_done.clear()
            entry.shard_deliveries.clear()
            return attempt

    def _current(self, job_id: str, attempt: int) -> _Entry | None:
        entry = self._entries.get(job_id)
        if entry is None or entry.record.status != JobStatus.RUNNING:
            return None
        return entry if entry.record.attempts == attempt else None

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        with self._lock:
            entry = self._current(job_id, attempt)
            if entry is not None:
                self._update(entry, progress=progress)
                if preview is not None:
                    entry.preview = preview

    def shard_progress(self, job_id: str, attempt: int, shard: int, done: int, total: int) -> None:
        with self._lock:
            entry = self._current(job_id, attempt)
            if entry is not None:
                entry.shard_done[shard] = done
                step = min(sum(entry.shard_done.values()), total)
                self._update(entry, progress=Progress(step=step, total=total, unit="images"))

    def start_shard(
        self, job_id: str, attempt: int, shard: int, max_deliveries: int, holder: str = ""
    ) -> ShardStart:
        with self._lock:
            entry = self._current(job_id, attempt)
            if entry is None or entry.record.cancel:
                return ShardStart.STOP
            deliveries = entry.shard_deliveries.get(shard, 0) + 1
            entry.shard_deliveries[shard] = deliveries
            if deliveries > max_deliveries:
                self._close(entry, Ending(JobStatus.FAILED, error=lost_error(max_deliveries)))
                return ShardStart.STOP
            entry.shard_done[shard] = 0
            return ShardStart.RUN

    def renew(self, job_id: str, attempt: int, shard: int | None = None) -> bool:
        with self._lock:
            return self._current(job_id, attempt) is not None

    def release(self, job_id: str, attempt: int) -> None:
        return None

    def save_checkpoint(self, job_id: str, attempt: int, data: bytes) -> None:
        with self._lock:
            entry = self._current(job_id, attempt)
            if entry is not None:
                entry.checkpoint = data

    def checkpoint(self, job_id: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(job_id)
            return entry.checkpoint if entry is not None else None

    def should_stop(self, job_id: str, attempt: int) -> bool:
        with self._lock:
            entry = self._current(job_id, attempt)
            return entry is None or entry.record.cancel

    def finish(self, job_id: str, attempt: int, ending: Ending, ttl_seconds: int) -> bool:
        with self._lock:
            # Only the running attempt may finish: this also makes the result written once.
            entry = self._current(job_id, attempt)
            if entry is None:
                return False
            entry.checkpoint = None
            self._close(entry, ending, ttl_seconds)
        self._enforce_cap()
        return True

    def fail_running(self, job_id: str, error: JobError, ttl_seconds: int) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            attempt = entry.record.attempts if entry is not None else 0
        return self.finish(job_id, attempt, Ending(JobStatus.FAILED, error=error), ttl_seconds)
