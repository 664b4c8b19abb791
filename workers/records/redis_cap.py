"""A byte cap on what finished jobs keep in Redis (``CNNVIZ_REDIS_RESULTS_MAX_BYTES``).

Each finished job's kept parts (result JSON, last preview, raw arrays) are counted at its
final write: its id goes into a sorted set by finishing time and its bytes into a hash, and
a counter holds the sum. When the sum passes the cap, the oldest finished jobs' parts are
deleted, in the same script, until the rest fit: their records stay (until their TTL) with
``expired`` set, so their reads raise :class:`~workers.records.base.ResultExpired` (410
``result_expired``), and their idempotency key is freed, so a replay runs a new job. Queued
and running jobs are never counted nor touched (nor checkpoints, which go with the finish).

A job deleted through the API leaves the count at once; one whose keys reached their TTL
stays counted until it is the oldest and is dropped first (its keys are gone already), so
the count errs towards evicting early, never late.
"""

from __future__ import annotations

KEPT_KEY = "cnnviz:kept"
"""Finished jobs that keep parts: a sorted set of ids scored by when they finished."""
KEPT_SIZES_KEY = "cnnviz:kept:sizes"
"""Their kept bytes, by id (a hash)."""
KEPT_TOTAL_KEY = "cnnviz:kept:total"
"""The sum of the kept bytes."""
# Lua: the cap's keys, named in the scripts as the idempotency keys are (one Redis, no Cluster).
CAP_LOCALS = f"local KEPT, SIZES, TOTAL = '{KEPT_KEY}', '{KEPT_SIZES_KEY}', '{KEPT_TOTAL_KEY}'\n"


def keep_script(prefix: str, record: str, result: str, preview: str, arrays: str) -> str:
    """Lua: count a job that just finished and evict past the cap. ``record`` and the parts
    are Lua expressions of the job's keys; ``CAP`` and ``NOW`` those of the cap (0: none) and
    the time."""
    return (
        CAP_LOCALS
        + f"""
local size = redis.call('STRLEN', {result}) + redis.call('STRLEN', {preview})
  + redis.call('STRLEN', {arrays})
if size > 0 then
  local id = redis.call('HGET', {record}, 'id')
  redis.call('ZADD', KEPT, NOW, id)
  redis.call('HSET', SIZES, id, size)
  redis.call('INCRBY', TOTAL, size)
end
if CAP > 0 then
  local total = tonumber(redis.call('GET', TOTAL) or '0')
  while total > CAP do
    local oldest = redis.call('ZRANGE', KEPT, 0, 0)[1]
    if not oldest then break end
    local kept = tonumber(redis.call('HGET', SIZES, oldest) or '0')
    redis.call('ZREM', KEPT, oldest)
    redis.call('HDEL', SIZES, oldest)
    total = redis.call('DECRBY', TOTAL, kept)
    local rec = '{prefix}' .. oldest
    redis.call('DEL', rec .. ':result', rec .. ':preview', rec .. ':arrays')
    if redis.call('EXISTS', rec) == 1 then
      redis.call('HSET', rec, 'expired', '1')
      local idem = redis.call('HGET', rec, 'idem')
      if idem then redis.call('DEL', idem) end
    end
  end
end
"""
    )


def forget_script(id_expr: str) -> str:
    """Lua: a deleted job leaves the count."""
    return (
        CAP_LOCALS
        + f"""
local kept = redis.call('HGET', SIZES, {id_expr})
if kept then
  redis.call('HDEL', SIZES, {id_expr})
  redis.call('ZREM', KEPT, {id_expr})
  redis.call('DECRBY', TOTAL, kept)
end
"""
    )
