"""The SQLite side of :class:`~workers.records.sqlite.SqliteRecords`: the schema, one
connection per thread, write transactions, blob files, and who holds a job.

The database is one file (``jobs.db``) in WAL mode: readers never wait for the writer, and a
write transaction starts with ``BEGIN IMMEDIATE``, so two writers (threads of one process, or
two processes on one data directory) queue on SQLite's lock instead of failing half-way
through a read-then-write. ``synchronous=NORMAL`` in WAL mode keeps every committed
transaction across a crash of the process (SIGKILL); a power loss may lose the last few.

Parts larger than :data:`INLINE_MAX` (results of big jobs, raw arrays, checkpoints) live in
files beside the database, under ``results/``, named by the job and a random token, written
under a temporary name and renamed into place before the transaction that references them
commits; a file that no committed row names (a crash between the two) is removed at the next
start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["INLINE_MAX", "BlobFiles", "Database", "Holder"]

INLINE_MAX = 64 * 1024
"""Parts up to this many bytes are kept in the database; larger ones in files beside it."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,          -- schemas.jobs.JobRecord as JSON
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL,
    holder TEXT,                   -- the process that runs it, or has it queued
    finished_seq INTEGER,          -- the order jobs finished in (oldest parts go first)
    kept INTEGER NOT NULL DEFAULT 0,  -- bytes of a finished job's parts, against the cap
    expired INTEGER NOT NULL DEFAULT 0,  -- its parts were dropped for the cap
    yielded INTEGER NOT NULL DEFAULT 0  -- attempts given back by a process that stopped
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_seq);
CREATE TABLE IF NOT EXISTS parts (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,            -- result, preview, arrays, checkpoint
    data BLOB,                     -- the bytes, or NULL when they are in a file
    path TEXT,                     -- the file under results/, relative
    size INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard)
);
CREATE TABLE IF NOT EXISTS idempotency (
    digest TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reuse (
    digest TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS durations (
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    counts TEXT NOT NULL,          -- JSON list, cumulative per bucket
    sum REAL NOT NULL,
    PRIMARY KEY (kind, status)
);
CREATE TABLE IF NOT EXISTS sanity (   -- verdicts of sanity checks, kept beyond jobs
    model TEXT NOT NULL,
    weights TEXT NOT NULL,         -- sha256 of the weights checked
    method TEXT NOT NULL,
    layer TEXT NOT NULL,           -- '' for a method that reads no layer
    passed INTEGER NOT NULL,
    PRIMARY KEY (model, weights, method, layer)
);
CREATE TABLE IF NOT EXISTS callbacks (   -- the outbox (workers.records.outbox)
    job_id TEXT PRIMARY KEY,
    due_at REAL NOT NULL,          -- epoch seconds
    tries INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,  -- the latest claim's fence
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS processes (
    holder TEXT PRIMARY KEY,       -- host/pid/token of a process that runs jobs
    seen_at REAL NOT NULL          -- its last heartbeat (epoch seconds)
);
"""


class Database:
    """``path`` opened in WAL mode; one connection per thread, all closed by :meth:`close`."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Idempotent (IF NOT EXISTS): two processes opening one store at once both succeed.
        self.connection().executescript(SCHEMA)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit (isolation_level None): transactions are begun explicitly below.
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the database's write lock taken at its start (``BEGIN
        IMMEDIATE``), committed at the end of the block, rolled back on an exception."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """One read, outside any write transaction (WAL: a consistent snapshot)."""
        return self.connection().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


class BlobFiles:
    """Large parts as files in ``directory``, one folder per job (named by a digest of its
    id, so no id names a path outside it)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def write(self, job_id: str, name: str, data: bytes) -> str:
        """Store ``data`` in a new file; its path relative to the directory. Raises OSError
        (disk full, read-only) with nothing left behind."""
        folder = hashlib.sha256(job_id.encode()).hexdigest()[:32]
        relative = f"{folder}/{name}-{secrets.token_hex(8)}"
        path = self.directory / relative
        path.parent.mkdir(exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        try:
            with open(staging, "wb") as file:
                file.write(data)
            os.replace(staging, path)
        except BaseException:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise
        return relative

    def read(self, relative: str) -> bytes | None:
        try:
            return (self.directory / relative).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, relative: str | None) -> None:
        if relative is None:
            return
        path = self.directory / relative
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):  # the job's folder, once empty
            path.parent.rmdir()

    def files(self) -> Iterator[str]:
        """Every stored file, relative (staging files left by a crash included)."""
        for path in self.directory.glob("*/*"):
            yield path.relative_to(self.directory).as_posix()

    def bytes_on_disk(self) -> int:
        total = 0
        for path in self.directory.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total


class Holder:
    """Who this process is to the records: ``host/pid/start/token`` (``start``: when the
    process started, in clock ticks since boot, so a pid used again is told apart). A job a
    process queued or runs names it, and it beats a heartbeat into the database while it
    lives."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = f"{self.host}/{self.pid}/{_started(self.pid)}/{secrets.token_hex(6)}"

    def gone(self, other: str) -> bool:
        """Whether the process ``other`` names is known to be gone without waiting for its
        heartbeat to lapse: it ran on this host, and its pid is dead or now belongs to a
        process that started at another time (a restart that got the same pid, as pid 1 in
        a container does)."""
        parts = other.split("/")
        if len(parts) != 4 or parts[0] != self.host or not parts[1].isdigit():
            return False
        pid, started = int(parts[1]), parts[2]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        now = _started(pid)
        return bool(now and started and now != started)


def _started(pid: int) -> str:
    """When process ``pid`` started (``/proc/<pid>/stat`` field 22), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]
