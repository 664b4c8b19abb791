"""The callbacks outbox of :class:`~workers.records.sqlite.SqliteRecords` (the rules are in
:mod:`.outbox`): one row per job in the ``callbacks`` table, each claim one write
transaction, so two processes on one data directory never claim the same entry."""

from __future__ import annotations

import sqlite3
import time

from workers.records.outbox import Due
from workers.records.sqlite_db import Database

__all__ = ["SqliteOutbox", "add_tx"]


def add_tx(conn: sqlite3.Connection, job_id: str) -> None:
    """Make the job's callback due now, once per job, in the caller's transaction: the one
    of the job's final write, so no process lost between the two loses a callback."""
    conn.execute(
        "INSERT OR IGNORE INTO callbacks (job_id, due_at) SELECT id, ? FROM jobs WHERE id = ?",
        (time.time(), job_id),
    )


class SqliteOutbox:
    """A :class:`~workers.records.outbox.CallbackOutbox` in the records' database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, job_id: str) -> None:
        with self._db.transaction() as conn:
            add_tx(conn, job_id)

    def claim(self, lease_s: float, limit: int) -> list[Due]:
        now = time.time()
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT job_id, tries, token FROM callbacks WHERE done = 0 AND due_at <= ? "
                "ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            claimed = [Due(row["job_id"], row["tries"], row["token"] + 1) for row in rows]
            conn.executemany(
                "UPDATE callbacks SET due_at = ?, token = ? WHERE job_id = ?",
                [(now + lease_s, due.token, due.job_id) for due in claimed],
            )
        return claimed

    def settle(self, due: Due, retry_in_s: float | None) -> None:
        with self._db.transaction() as conn:
            if retry_in_s is None:
                conn.execute(
                    "UPDATE callbacks SET done = 1 WHERE job_id = ? AND token = ?",
                    (due.job_id, due.token),
                )
            else:
                conn.execute(
                    "UPDATE callbacks SET due_at = ?, tries = tries + 1 "
                    "WHERE job_id = ? AND token = ?",
                    (time.time() + retry_in_s, due.job_id, due.token),
                )
