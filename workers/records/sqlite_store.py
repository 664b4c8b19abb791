"""What every transition of :class:`~workers.records.sqlite.SqliteRecords` shares: loading and
saving a record inside a transaction, a job's parts (inline or in files), forgetting a job,
TTL cleanup, the byte cap on what finished jobs keep, and whether a holder is alive.

Every helper whose name ends in ``_tx`` runs inside a transaction the caller opened
(``with self._db.transaction() as conn``) and returns the blob files to remove once it has
committed: a file is removed only after no committed row can name it any more.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from schemas.jobs import JobError, JobRecord, JobStatus
from workers.records.errors import JobNotFound, ResultExpired
from workers.records.sqlite_db import INLINE_MAX, BlobFiles, Database, Holder
from workers.records.sqlite_outbox import SqliteOutbox, add_tx
from workers.records.stops import StopChecks
from workers.records.verdicts import Verdict

log = logging.getLogger(__name__)

DB_NAME = "jobs.db"
BLOBS_DIR = "results"
# A blob file no row names is left alone this long: another process may be about to commit
# the row that names it.
_ORPHAN_AGE_S = 3600.0
_PURGE_EVERY_S = 30.0


class SqliteStore:
    """The database, the blob files, this process's identity and the settings of the
    transitions (their parameters: :class:`~workers.records.sqlite.SqliteRecords`); the
    shared helpers."""

    # Calls take a fraction of a millisecond, but a write may wait for another process's
    # transaction, and a purge or the cap may remove many files: the API calls them in a
    # thread, never on its event loop.
    blocking = True

    def __init__(
        self,
        directory: Path,
        ttl_seconds: int,
        *,
        max_result_bytes: int | None = None,
        blobs_dir: Path | None = None,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        stop_check_interval_s: float = 0.25,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._db = Database(directory / DB_NAME)
        self.callbacks = SqliteOutbox(self._db)
        self._blobs = BlobFiles(blobs_dir if blobs_dir is not None else directory / BLOBS_DIR)
        self._ttl = ttl_seconds
        self._cap = max_result_bytes
        self._lease_s = lease_s
        self.holder = Holder()
        self._purged_at = 0.0
        self._max_attempts = max_attempts
        self._stops = StopChecks(stop_check_interval_s)
        self._suspended = threading.Event()
        self._remove_orphans()
        self.heartbeat()

    # ---- records ----

    def _row_tx(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE id = ? AND expires_at > ?", (job_id, time.time())
        ).fetchone()
        return row

    def _record_tx(self, conn: sqlite3.Connection, job_id: str) -> JobRecord:
        """The live record of ``job_id`` in this transaction; JobNotFound otherwise."""
        row = self._row_tx(conn, job_id)
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.model_validate_json(row["record"])

    def _load(self, job_id: str) -> tuple[sqlite3.Row, JobRecord]:
        rows = self._db.read(
            "SELECT * FROM jobs WHERE id = ? AND expires_at > ?", (job_id, time.time())
        )
        if not rows:
            raise JobNotFound(job_id)
        return rows[0], JobRecord.model_validate_json(rows[0]["record"])

    def _save_tx(self, conn: sqlite3.Connection, record: JobRecord, **columns: Any) -> None:
        """Write ``record`` (and bookkeeping ``columns``) over its row."""
        sets = ", ".join(f"{name} = ?" for name in columns)
        conn.execute(
            f"UPDATE jobs SET record = ?, status = ?, attempts = ?{', ' if sets else ''}{sets} "
            "WHERE id = ?",
            (
                record.model_dump_json(),
                record.status.value,
                record.attempts,
                *columns.values(),
                record.id,
            ),
        )

    def _current_tx(self, conn: sqlite3.Connection, job_id: str, attempt: int) -> JobRecord | None:
        """The record, when it runs under ``attempt`` (the fence of every runner write)."""
        row = conn.execute(
            "SELECT record FROM jobs WHERE id = ? AND status = 'running' AND attempts = ? "
            "AND expires_at > ?",
            (job_id, attempt, time.time()),
        ).fetchone()
        return JobRecord.model_validate_json(row["record"]) if row is not None else None

    def _close_tx(
        self,
        conn: sqlite3.Connection,
        record: JobRecord,
        status: JobStatus,
        error: JobError | None = None,
        ttl_seconds: int | None = None,
    ) -> tuple[JobRecord, list[str]]:
        """Finish the record; it lives ``ttl_seconds`` (default: the store's TTL) from now.
        Its checkpoint and shards go; its other parts count against the cap from now; its
        callback, if it has one, is due (the same transaction)."""
        now = time.time()
        record = record.model_copy(update={"status": status, "finished_at": now, "error": error})
        removed = self._drop_part_tx(conn, record.id, "checkpoint")
        conn.execute("DELETE FROM shards WHERE job_id = ?", (record.id,))
        kept = conn.execute(
            "SELECT COALESCE(SUM(size), 0) FROM parts WHERE job_id = ?", (record.id,)
        ).fetchone()[0]
        seq = conn.execute("SELECT COALESCE(MAX(finished_seq), 0) + 1 FROM jobs").fetchone()[0]
        self._save_tx(
            conn,
            record,
            expires_at=now + (self._ttl if ttl_seconds is None else ttl_seconds),
            holder=None,
            finished_seq=seq,
            kept=kept,
        )
        if record.callback_url is not None:
            add_tx(conn, record.id)
        return record, removed

    # ---- parts ----

    def _stage(self, job_id: str, name: str, data: bytes) -> str | None:
        """Write a large part's file before the transaction that names it (None: inline)."""
        return self._blobs.write(job_id, name, data) if len(data) > INLINE_MAX else None

    def _put_part_tx(
        self, conn: sqlite3.Connection, job_id: str, name: str, data: bytes, path: str | None
    ) -> list[str]:
        removed = self._drop_part_tx(conn, job_id, name)
        conn.execute(
            "INSERT INTO parts (job_id, name, data, path, size) VALUES (?, ?, ?, ?, ?)",
            (job_id, name, None if path is not None else data, path, len(data)),
        )
        return removed

    def _drop_part_tx(self, conn: sqlite3.Connection, job_id: str, name: str) -> list[str]:
        row = conn.execute(
            "SELECT path FROM parts WHERE job_id = ? AND name = ?", (job_id, name)
        ).fetchone()
        conn.execute("DELETE FROM parts WHERE job_id = ? AND name = ?", (job_id, name))
        return [row["path"]] if row is not None and row["path"] is not None else []

    def _write_part(self, job_id: str, attempt: int, name: str, data: bytes, what: str) -> bool:
        """Keep a part of the running ``attempt`` (best effort: a disk that refuses it is
        logged, and the job goes on); False when the attempt is no longer current."""
        try:
            path = self._stage(job_id, name, data)
        except OSError as exc:
            log.warning("job %s: %s not kept: %s", job_id, what, exc)
            return True
        removed = [path] if path is not None else []
        try:
            with self._db.transaction() as conn:
                if self._current_tx(conn, job_id, attempt) is None:
                    return False
                removed = self._put_part_tx(conn, job_id, name, data, path)
        except sqlite3.Error as exc:
            log.warning("job %s: %s not kept: %s", job_id, what, exc)
            return True
        finally:
            self._remove(removed)
        return True

    def _part(self, job_id: str, name: str, *, expire: bool = True) -> bytes | None:
        """One part of a live job, from the database or its file; ResultExpired once the cap
        dropped it (``expire``)."""
        row, _ = self._load(job_id)
        if expire and row["expired"]:
            raise ResultExpired(job_id)
        parts = self._db.read(
            "SELECT data, path FROM parts WHERE job_id = ? AND name = ?", (job_id, name)
        )
        if not parts:
            return None
        if parts[0]["path"] is None:
            return bytes(parts[0]["data"])
        data = self._blobs.read(parts[0]["path"])
        if data is None and expire:  # dropped meanwhile, for room: expired, not empty
            row, _ = self._load(job_id)
            if row["expired"]:
                raise ResultExpired(job_id)
        return data

    def _remove(self, paths: list[str]) -> None:
        for path in paths:
            self._blobs.remove(path)

    # ---- forgetting ----

    def _forget_tx(self, conn: sqlite3.Connection, job_id: str) -> list[str]:
        """Remove every row of a job and the keys that lead to it; its files to remove."""
        paths = [
            row["path"]
            for row in conn.execute(
                "SELECT path FROM parts WHERE job_id = ? AND path IS NOT NULL", (job_id,)
            )
        ]
        for table in ("parts", "shards", "callbacks"):
            conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._free_keys_tx(conn, job_id)
        return paths

    def _free_keys_tx(self, conn: sqlite3.Connection, job_id: str) -> None:
        """A replay of its idempotency key, or an identical request, makes a new job."""
        conn.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM reuse WHERE job_id = ?", (job_id,))

    # ---- what requests name by digest: the latest job of a request, kept bytes ----

    def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        self._keep("reuse", "job_id", digest, job_id, ttl_seconds)

    def recall(self, digest: str) -> str | None:
        job_id = self._kept("reuse", "job_id", digest)
        return str(job_id) if job_id is not None else None

    def put_blob(self, digest: str, data: bytes, ttl_seconds: int) -> None:
        self._keep("blobs", "data", digest, data, ttl_seconds)

    def blob(self, digest: str) -> bytes | None:
        data = self._kept("blobs", "data", digest)
        return bytes(data) if data is not None else None

    def _keep(self, table: str, column: str, digest: str, value: object, ttl_s: int) -> None:
        """Keep ``value`` under ``digest`` in ``table`` (``reuse`` or ``blobs``) for ``ttl_s``,
        in place of what was kept there before."""
        with self._db.transaction() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO {table} (digest, {column}, expires_at) VALUES (?, ?, ?)",
                (digest, value, time.time() + ttl_s),
            )

    def _kept(self, table: str, column: str, digest: str) -> Any:
        """What ``_keep`` kept under ``digest`` and has not expired; None otherwise."""
        rows = self._db.read(
            f"SELECT {column} FROM {table} WHERE digest = ? AND expires_at > ?",
            (digest, time.time()),
        )
        return rows[0][column] if rows else None

    def purge(self, force: bool = False) -> int:
        """Forget the jobs past their TTL (at most every half minute unless ``force``); how
        many. Processes not heard of for a day are forgotten too."""
        now = time.time()
        if not force and now - self._purged_at < _PURGE_EVERY_S:
            return 0
        self._purged_at = now
        removed: list[str] = []
        with self._db.transaction() as conn:
            expired = [
                row["id"]
                for row in conn.execute("SELECT id FROM jobs WHERE expires_at <= ?", (now,))
            ]
            for job_id in expired:
                removed += self._forget_tx(conn, job_id)
            conn.execute("DELETE FROM reuse WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM blobs WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM processes WHERE seen_at < ?", (now - 24 * 3600,))
        self._remove(removed)
        return len(expired)

    def _remove_orphans(self) -> None:
        """Remove blob files no row names (a crash between a file and its row), once old."""
        named = {
            row["path"] for row in self._db.read("SELECT path FROM parts WHERE path IS NOT NULL")
        }
        cutoff = time.time() - _ORPHAN_AGE_S
        for relative in self._blobs.files():
            if relative in named:
                continue
            path = self._blobs.directory / relative
            try:
                if path.stat().st_mtime < cutoff:
                    self._blobs.remove(relative)
            except OSError:
                continue

    # ---- the cap on what finished jobs keep ----

    def _enforce_cap(self) -> None:
        """Drop the oldest finished jobs' parts until the rest fit the cap (unfinished jobs are
        never touched); their records stay, and their parts read as ResultExpired."""
        if self._cap is None:
            return
        removed: list[str] = []
        with self._db.transaction() as conn:
            total = conn.execute(
                "SELECT COALESCE(SUM(kept), 0) FROM jobs WHERE finished_seq IS NOT NULL "
                "AND expired = 0"
            ).fetchone()[0]
            while total > self._cap:
                row = conn.execute(
                    "SELECT id, kept FROM jobs WHERE finished_seq IS NOT NULL AND expired = 0 "
                    "AND kept > 0 ORDER BY finished_seq LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                removed += [
                    r["path"]
                    for r in conn.execute(
                        "SELECT path FROM parts WHERE job_id = ? AND path IS NOT NULL", (row["id"],)
                    )
                ]
                conn.execute("DELETE FROM parts WHERE job_id = ?", (row["id"],))
                conn.execute("UPDATE jobs SET expired = 1, kept = 0 WHERE id = ?", (row["id"],))
                self._free_keys_tx(conn, row["id"])
                total -= row["kept"]
                log.info("job %s: result dropped to keep the store under its cap", row["id"])
        self._remove(removed)

    @property
    def kept_bytes(self) -> int:
        """Bytes finished jobs keep now, in the database and in files (what the cap bounds)."""
        rows = self._db.read(
            "SELECT COALESCE(SUM(kept), 0) FROM jobs WHERE finished_seq IS NOT NULL AND expired = 0"
        )
        return int(rows[0][0])

    @property
    def disk_bytes(self) -> int:
        """Bytes of the blob files (large parts of every job, checkpoints included)."""
        return self._blobs.bytes_on_disk()

    @property
    def results_dir(self) -> Path:
        """Where large parts are written."""
        return self._blobs.directory

    # ---- holders ----

    def _alive_tx(self, conn: sqlite3.Connection, holder: str | None) -> bool:
        """Whether the process ``holder`` names still runs (its heartbeat is fresh)."""
        if holder is None:
            return False
        if holder == self.holder.name:
            return True
        if self.holder.gone(holder):
            return False
        row = conn.execute("SELECT seen_at FROM processes WHERE holder = ?", (holder,)).fetchone()
        return row is not None and row["seen_at"] > time.time() - self._lease_s

    def heartbeat(self) -> None:
        """Say that this process is alive (every few seconds, from a thread of its own)."""
        with self._db.transaction() as conn:
            self._beat_tx(conn)

    def _beat_tx(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO processes (holder, seen_at) VALUES (?, ?) "
            "ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at",
            (self.holder.name, time.time()),
        )

    # ---- sanity-check verdicts (workers.records.verdicts), kept beyond any job ----

    def keep_verdicts(self, model: str, weights: str, verdicts: list[Verdict]) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO sanity (model, weights, method, layer, passed) "
                "VALUES (?, ?, ?, ?, ?)",
                [(model, weights, v.method, v.layer, int(v.passed)) for v in verdicts],
            )

    def verdicts(self, model: str, weights: str) -> dict[tuple[str, str], bool]:
        rows = self._db.read(
            "SELECT method, layer, passed FROM sanity WHERE model = ? AND weights = ?",
            (model, weights),
        )
        return {(row["method"], row["layer"]): bool(row["passed"]) for row in rows}
