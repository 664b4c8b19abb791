"""Job records in SQLite, for the in-process transport: they survive a restart of the API.

One database file (``jobs.db``) under the data directory (``CNNVIZ_DATA_DIR``), in WAL mode;
large parts (results of big jobs, raw arrays, checkpoints) in files beside it that its rows
name (:mod:`.sqlite_db`). Every transition is one ``BEGIN IMMEDIATE`` transaction, so a
cancel racing a start, or two requests with one idempotency key, resolve atomically, across
threads and across processes; and every write after :meth:`SqliteRecords.start` is fenced by
the attempt number it returned, as in Redis (:mod:`.redis`): a superseded attempt's writes
are ignored and the final state is written once.

Who runs a job. A job names its ``holder``: the process that queued it in its executor (the
one that took the submission) or runs it. A process beats a heartbeat into the database
every few seconds (:meth:`heartbeat`); a job whose holder's heartbeat is older than
``lease_s``, or whose holder is a dead pid of this host, is an orphan, and any process on the
data directory claims it (:meth:`claim`), once, and runs it as its next attempt, resuming
from its last checkpoint. So after a restart (SIGKILL or SIGTERM) queued jobs run and running
ones resume; and two API processes on one data directory (``uvicorn --workers 2``) never both
run a job: a start refuses a job another live process holds.

A process that stops cleanly (:meth:`suspend`) lets its running jobs stop at their next step
without writing them off as cancelled, and gives them back at once (:meth:`leave`); such an
attempt does not count against ``max_attempts``, which bounds only lost ones (a job that
kills its process every time fails as ``worker_lost`` rather than crash the service at
every start).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

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
from workers.records.sqlite_store import SqliteStore
from workers.records.stats import Durations

__all__ = ["SqliteRecords"]

log = logging.getLogger(__name__)


class SqliteRecords(SqliteStore):
    """:class:`~workers.records.base.JobRecords` in SQLite under ``directory``; records live
    ``ttl_seconds`` (the constructor is :class:`~workers.records.sqlite_store.SqliteStore`'s).

    ``max_result_bytes``: the most bytes finished jobs keep (results, previews, raw arrays;
    None: no cap); past it the oldest finished jobs' parts are dropped and read as
    ResultExpired. ``blobs_dir``: where large parts go (default: ``directory/blobs``).
    ``lease_s``: how long a process's heartbeat vouches for it; ``max_attempts``: the most
    attempts of a job whose process was lost; ``stop_check_interval_s``: how often a running
    attempt reads whether it must stop.
    """

    # ---- the API's side ----

    def create(
        self, record: JobRecord, ttl_seconds: int, conditions: Conditions = NO_CONDITIONS
    ) -> tuple[JobRecord, bool]:
        idempotency, max_active = conditions.idempotency, conditions.max_active
        self.purge()
        with self._db.transaction() as conn:
            if idempotency is not None:
                known = conn.execute(
                    "SELECT i.job_id, i.fingerprint, j.record FROM idempotency i "
                    "JOIN jobs j ON j.id = i.job_id WHERE i.digest = ? AND j.expires_at > ?",
                    (idempotency.digest, time.time()),
                ).fetchone()
                if known is not None:
                    if known["fingerprint"] != idempotency.fingerprint:
                        raise IdempotencyConflict(idempotency.digest)
                    return JobRecord.model_validate_json(known["record"]), False
            if max_active is not None:
                active = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', "
                    "'running') AND expires_at > ?",
                    (record.owner, time.time()),
                ).fetchone()[0]
                if active >= max_active:
                    raise QuotaExceeded(record.owner, active)
            if idempotency is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (digest, job_id, fingerprint) "
                    "VALUES (?, ?, ?)",
                    (idempotency.digest, record.id, idempotency.fingerprint),
                )
                record = record.model_copy(update={"idem": idempotency.digest})
            conn.execute(
                "INSERT INTO jobs (id, record, status, kind, owner, attempts, expires_at, "
                "holder) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.model_dump_json(),
                    record.status.value,
                    record.kind,
                    record.owner,
                    record.attempts,
                    time.time() + ttl_seconds,
                    self.holder.name,
                ),
            )
        return record, True

    def get(self, job_id: str) -> JobRecord:
        return self._load(job_id)[1]

    def result(self, job_id: str) -> str | None:
        data = self._part(job_id, "result")
        return data.decode() if data is not None else None

    def preview(self, job_id: str) -> bytes | None:
        return self._part(job_id, "preview")

    def arrays(self, job_id: str) -> bytes | None:
        return self._part(job_id, "arrays")

    def cancel(self, job_id: str) -> JobRecord:
        removed: list[str] = []
        with self._db.transaction() as conn:
            record = self._record_tx(conn, job_id)
            if not record.status.finished:
                record = record.model_copy(update={"cancel": True})
                if record.status == JobStatus.QUEUED:
                    record, removed = self._close_tx(conn, record, JobStatus.CANCELLED)
                else:
                    self._save_tx(conn, record)
        self._remove(removed)
        return record

    def delete(self, job_id: str) -> None:
        with self._db.transaction() as conn:
            record = self._record_tx(conn, job_id)
            if not record.status.finished:
                raise JobNotFinished(record)
            removed = self._forget_tx(conn, job_id)
        self._remove(removed)

    def discard(self, job_id: str) -> None:
        with self._db.transaction() as conn:
            removed = self._forget_tx(conn, job_id)
        self._remove(removed)

    def ping(self) -> None:
        return None

    def appendonly(self) -> bool | None:
        return True  # every transition is committed to the database file

    def close(self) -> None:
        self._db.close()

    def owned(
        self, owner: str, chosen: JobFilter, before: Cursor | None, limit: int
    ) -> list[JobRecord]:
        rows = self._db.read(
            "SELECT record FROM jobs WHERE owner = ? AND expires_at > ?", (owner, time.time())
        )
        mine = [JobRecord.model_validate_json(row["record"]) for row in rows]
        return newest_first(mine, chosen, before, limit)

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._db.read(
            "SELECT kind, status, COUNT(*) AS n FROM jobs WHERE expires_at > ? "
            "GROUP BY kind, status",
            (time.time(),),
        )
        return {(row["kind"], row["status"]): int(row["n"]) for row in rows}

    def observe_duration(self, kind: str, status: JobStatus, seconds: float) -> None:
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT counts, sum FROM durations WHERE kind = ? AND status = ?",
                (kind, status.value),
            ).fetchone()
            durations = (
                Durations(json.loads(row["counts"]), row["sum"]) if row is not None else Durations()
            )
            durations.observe(seconds)
            conn.execute(
                "INSERT OR REPLACE INTO durations (kind, status, counts, sum) VALUES (?, ?, ?, ?)",
                (kind, status.value, json.dumps(durations.counts), durations.sum),
            )

    def durations(self) -> dict[tuple[str, str], Durations]:
        rows = self._db.read("SELECT kind, status, counts, sum FROM durations")
        return {
            (row["kind"], row["status"]): Durations(json.loads(row["counts"]), row["sum"])
            for row in rows
        }

    # ---- processes: who runs what ----

    def claim(self, limit: int = 100) -> list[JobRecord]:
        """Take over the unfinished jobs whose holder is gone (at most ``limit``), oldest
        first: this process runs them now. A claim is made once, whoever else claims."""
        claimed: list[JobRecord] = []
        with self._db.transaction() as conn:
            self._beat_tx(conn)  # a process that takes jobs over is alive
            rows = conn.execute(
                "SELECT id, record, holder FROM jobs WHERE status IN ('queued', 'running') "
                "AND expires_at > ? AND (holder IS NULL OR holder != ?) ORDER BY rowid",
                (time.time(), self.holder.name),
            ).fetchall()
            for row in rows:
                if len(claimed) >= limit:
                    break
                if self._alive_tx(conn, row["holder"]):
                    continue
                conn.execute(
                    "UPDATE jobs SET holder = ? WHERE id = ?", (self.holder.name, row["id"])
                )
                claimed.append(JobRecord.model_validate_json(row["record"]))
        return claimed

    def suspend(self) -> None:
        """The process is stopping: its running jobs stop at their next step, and are not
        written off (they are this process's to give back, not cancelled)."""
        self._suspended.set()

    def leave(self) -> None:
        """Give this process's jobs back at once: the next process to claim takes them."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM processes WHERE holder = ?", (self.holder.name,))
            conn.execute("UPDATE jobs SET holder = NULL WHERE holder = ?", (self.holder.name,))

    # ---- the runner's side ----

    def start(self, job_id: str, holder: str = "") -> int | None:
        # ``holder`` names a Celery delivery; here the process is the holder.
        removed: list[str] = []
        with self._db.transaction() as conn:
            row = self._row_tx(conn, job_id)
            if row is None:
                return None
            record = JobRecord.model_validate_json(row["record"])
            if record.status.finished:
                return None
            if record.cancel:
                _, removed = self._close_tx(conn, record, JobStatus.CANCELLED)
                return None
            if row["holder"] != self.holder.name and self._alive_tx(conn, row["holder"]):
                log.info("job %s not started: process %s runs it", job_id, row["holder"])
                return None
            self._beat_tx(conn)  # a process that starts a job is alive
            attempt = record.attempts + 1
            record = record.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "attempts": attempt,
                    "started_at": record.started_at or time.time(),
                }
            )
            if attempt - row["yielded"] > self._max_attempts:
                failed = record.model_copy(update={"attempts": attempt})
                _, removed = self._close_tx(
                    conn, failed, JobStatus.FAILED, lost_error(self._max_attempts)
                )
                return None
            # Progress stays: the attempt resumes from the last checkpoint and reports from
            # there. Shards start over (they run in sequence here, their partials in memory).
            self._save_tx(conn, record, holder=self.holder.name)
            conn.execute("DELETE FROM shards WHERE job_id = ?", (job_id,))
        self._remove(removed)
        return attempt

    def renew(self, job_id: str, attempt: int, shard: int | None = None) -> bool:
        with self._db.transaction() as conn:
            return self._current_tx(conn, job_id, attempt) is not None

    def release(self, job_id: str, attempt: int) -> None:
        return None

    def save_checkpoint(self, job_id: str, attempt: int, data: bytes) -> None:
        if not self._write_part(job_id, attempt, "checkpoint", data, "checkpoint"):
            self._stops.stop(job_id, attempt)

    def checkpoint(self, job_id: str) -> bytes | None:
        try:
            return self._part(job_id, "checkpoint", expire=False)
        except JobNotFound:
            return None

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        try:
            path = self._stage(job_id, "preview", preview) if preview is not None else None
        except OSError as exc:
            log.warning("job %s: preview not kept: %s", job_id, exc)
            path, preview = None, None
        removed = [path] if path is not None else []
        try:
            with self._db.transaction() as conn:
                record = self._current_tx(conn, job_id, attempt)
                if record is None:
                    self._stops.stop(job_id, attempt)
                    return
                self._save_tx(conn, record.model_copy(update={"progress": progress}))
                if preview is not None:
                    removed = self._put_part_tx(conn, job_id, "preview", preview, path)
        except sqlite3.Error as exc:  # best effort: a job that can still finish goes on
            log.warning("job %s: progress not recorded: %s", job_id, exc)
        finally:
            self._remove(removed)

    def attach(self, job_id: str, attempt: int, data: bytes, ttl_seconds: int) -> None:
        if not self._write_part(job_id, attempt, "arrays", data, "raw arrays"):
            self._stops.stop(job_id, attempt)

    def shard_progress(self, job_id: str, attempt: int, shard: int, done: int, total: int) -> None:
        with self._db.transaction() as conn:
            record = self._current_tx(conn, job_id, attempt)
            if record is None:
                return
            conn.execute(
                "INSERT INTO shards (job_id, shard, done) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id, shard) DO UPDATE SET done = excluded.done",
                (job_id, shard, done),
            )
            summed = conn.execute(
                "SELECT COALESCE(SUM(done), 0) FROM shards WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            step = min(int(summed), total)
            progress = Progress(step=step, total=total, unit="images")
            self._save_tx(conn, record.model_copy(update={"progress": progress}))

    def start_shard(
        self, job_id: str, attempt: int, shard: int, max_deliveries: int, holder: str = ""
    ) -> ShardStart:
        removed: list[str] = []
        with self._db.transaction() as conn:
            record = self._current_tx(conn, job_id, attempt)
            if record is None or record.cancel:
                return ShardStart.STOP
            conn.execute(
                "INSERT INTO shards (job_id, shard, done, deliveries) VALUES (?, ?, 0, 1) "
                "ON CONFLICT (job_id, shard) DO UPDATE SET done = 0, "
                "deliveries = deliveries + 1",
                (job_id, shard),
            )
            deliveries = conn.execute(
                "SELECT deliveries FROM shards WHERE job_id = ? AND shard = ?", (job_id, shard)
            ).fetchone()[0]
            if deliveries > max_deliveries:
                _, removed = self._close_tx(
                    conn, record, JobStatus.FAILED, lost_error(max_deliveries)
                )
                started = ShardStart.STOP
            else:
                started = ShardStart.RUN
        self._remove(removed)
        return started

    def should_stop(self, job_id: str, attempt: int) -> bool:
        def read() -> bool:
            sql = "SELECT status, attempts, record FROM jobs WHERE id = ?"
            rows = self._db.read(sql, (job_id,))
            return (
                not rows
                or rows[0]["status"] != JobStatus.RUNNING.value
                or rows[0]["attempts"] != attempt
                or JobRecord.model_validate_json(rows[0]["record"]).cancel
            )

        return self._suspended.is_set() or self._stops(job_id, attempt, read)

    def finish(self, job_id: str, attempt: int, ending: Ending, ttl_seconds: int) -> bool:
        status, error = ending.status, ending.error
        if status == JobStatus.CANCELLED and self._suspended.is_set():
            return self._yield(job_id, attempt)
        data = ending.result.encode() if ending.result is not None else None
        try:
            path = self._stage(job_id, "result", data) if data is not None else None
        except OSError as exc:  # the disk refused the result: a failure that says why
            log.error("job %s: result not stored: %s", job_id, exc)
            data, path, status = None, None, JobStatus.FAILED
            error = JobError(
                code="storage_error",
                message=f"the result could not be written under the data directory ({exc}); "
                "free space or fix the disk, then submit the job again",
            )
        removed = [path] if path is not None else []
        try:
            with self._db.transaction() as conn:
                # Only the running attempt may finish: this also makes the result written once.
                record = self._current_tx(conn, job_id, attempt)
                if record is None:
                    return False
                removed = []
                if data is not None:
                    removed += self._put_part_tx(conn, job_id, "result", data, path)
                _, closed = self._close_tx(conn, record, status, error, ttl_seconds)
                removed += closed
        finally:
            self._remove(removed)
        self._stops.forget(job_id, attempt)
        self._enforce_cap()
        return True

    def _yield(self, job_id: str, attempt: int) -> bool:
        """An attempt stopped by :meth:`suspend` (unless the job was asked to cancel): left
        running for the next process, which resumes it without counting it as lost."""
        with self._db.transaction() as conn:
            record = self._current_tx(conn, job_id, attempt)
            if record is None:
                return False
            if record.cancel:  # a real cancel: the final state is written
                _, removed = self._close_tx(conn, record, JobStatus.CANCELLED)
            else:
                conn.execute("UPDATE jobs SET yielded = yielded + 1 WHERE id = ?", (job_id,))
                log.info(
                    "job %s: attempt %d stopped with the process; resumed at next start",
                    job_id,
                    attempt,
                )
                return False
        self._remove(removed)
        return True

    def fail_running(self, job_id: str, error: JobError, ttl_seconds: int) -> bool:
        rows = self._db.read("SELECT attempts FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return False
        attempt = int(rows[0]["attempts"])
        return self.finish(job_id, attempt, Ending(JobStatus.FAILED, error=error), ttl_seconds)
