"""A byte cap on what finished jobs keep in Redis (``CNNVIZ_REDIS_RESULTS_MAX_BYTES``).

Each finished job's kept parts (result JSON, last preview, raw arrays) are counted at its
final write: its id goes into a sorted set by finishing time and its bytes into a hash, and
a counter holds the sum. When the sum passes the cap, the oldest finished jobs' parts are
deleted, in the same script, until the rest fit: their records stay (until their TTL) with
``expired`` set, so their reads raise :class:`~workers.records.errors.ResultExpired` (410
``result_expired``), and their idempotency key is freed, so a replay runs a new job. Queued
and running jobs are never counted nor touched (nor checkpoints, which go with the finish).

A job deleted through the API leaves the count at once; one whose keys reached their TTL
stays counted until it is the oldest and is dropped first (its keys are gone already), so
the count errs towards evicting early, never late.
"""

from __future__ import annotations

import redis

from workers.records.errors import ResultExpired
from workers.records.redis_keys import KEY_PREFIX

KEPT_KEY = "cnnviz:kept"
"""Finished jobs that keep parts: a sorted set of ids scored by when they finished."""
KEPT_SIZES_KEY = "cnnviz:kept:sizes"
"""Their kept bytes, by id (a hash)."""
KEPT_TOTAL_KEY = "cnnviz:kept:total"
"""The sum of the kept bytes."""
CAP_NAMES = {
    "KEPT_KEY": KEPT_KEY,
    "KEPT_SIZES_KEY": KEPT_SIZES_KEY,
    "KEPT_TOTAL_KEY": KEPT_TOTAL_KEY,
}
"""The cap's keys, as the Lua scripts name them (``lua/keep.lua``, ``lua/forget.lua``)."""


def read_kept(client: redis.Redis, record: str, part: str) -> bytes | None:
    """A part of a job (its key ``part``; ``record`` the job's record key); ResultExpired
    once the cap dropped it."""
    pipe = client.pipeline(transaction=False)
    pipe.get(part)
    pipe.hget(record, "expired")
    raw, expired = pipe.execute()
    if raw is None and expired == b"1":
        raise ResultExpired(record.removeprefix(KEY_PREFIX))
    data: bytes | None = raw
    return data
