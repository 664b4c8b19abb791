"""Job records: one state machine per backend, shared by the API and whatever runs jobs.

:class:`~workers.records.memory.MemoryRecords` for the in-process transport,
:class:`~workers.records.sqlite.SqliteRecords` for it on a data directory,
:class:`~workers.records.redis.RedisRecords` for Celery; all are
:class:`~workers.records.base.JobRecords`. What they raise is in :mod:`.errors`.
"""

from workers.records.base import (
    NO_CONDITIONS,
    Conditions,
    Cursor,
    Ending,
    Idempotency,
    JobFilter,
    JobRecords,
    Lapsed,
    ShardStart,
)
from workers.records.errors import (
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    QuotaExceeded,
    RecordsUnavailable,
    ResultExpired,
)

__all__ = [
    "NO_CONDITIONS",
    "Conditions",
    "Cursor",
    "Ending",
    "Idempotency",
    "IdempotencyConflict",
    "JobFilter",
    "JobNotFinished",
    "JobNotFound",
    "JobRecords",
    "Lapsed",
    "QuotaExceeded",
    "RecordsUnavailable",
    "ResultExpired",
    "ShardStart",
]
