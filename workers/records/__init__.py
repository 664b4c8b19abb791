"""Job records: one state machine per backend, shared by the API and whatever runs jobs.

:class:`~workers.records.memory.MemoryRecords` for the in-process transport,
:class:`~workers.records.redis.RedisRecords` for Celery; both are
:class:`~workers.records.base.JobRecords`.
"""

from workers.records.base import (
    Idempotency,
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    JobRecords,
    Lapsed,
    QuotaExceeded,
    RecordsUnavailable,
    ResultExpired,
    ShardStart,
)

__all__ = [
    "Idempotency",
    "IdempotencyConflict",
    "JobNotFinished",
    "JobNotFound",
    "JobRecords",
    "Lapsed",
    "QuotaExceeded",
    "RecordsUnavailable",
    "ResultExpired",
    "ShardStart",
]
