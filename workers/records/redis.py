"""Job records in Redis: the layout, and every transition as one Lua script.

A record is a hash at ``record_key(id)`` with the fields of :class:`schemas.jobs.JobRecord`
(strings: ids, status, epoch seconds, JSON). The result is a separate string key, written once
(``SET NX``); the preview a separate PNG; the shards of the current attempt a hash of their own.
Every key has a TTL: the job TTL from creation, and again from the moment the job finishes.

Each transition is one Lua script, so a cancel racing a worker's start, or two requests with
one idempotency key, resolve atomically; and every write after the start is fenced by the
attempt number the start returned:

* a job redelivered after its worker was lost starts attempt 2; anything attempt 1 still
  writes (its child may outlive its parent for a moment) is ignored, and attempt 1 stops at
  its next stop check;
* the final state is written once: the result with ``SET NX`` and the status only while the
  record is ``running`` under that attempt, so a job never reports two runs or two results;
* a job redelivered after it finished, or cancelled while queued, does not start at all.

Scripts touch the idempotency key named in the record as well, which a Redis Cluster would
refuse; cnnviz uses one Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.jobs import JobError, JobRecord, JobStatus, Progress
from workers.records.base import (
    Idempotency,
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    Lapsed,
    QuotaExceeded,
    RecordsUnavailable,
    ResultExpired,
    ShardStart,
    lost_error,
)
from workers.records.redis_cap import forget_script, keep_script
from workers.records.stats import Durations, bucket_labels

log = logging.getLogger(__name__)

KEY_PREFIX = "cnnviz:job:"
# The job duration histograms of every worker (a hash; no TTL: a few fields per kind).
STATS_KEY = "cnnviz:stats:job_duration"


def record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}"


def result_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:result"


def preview_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:preview"


def shards_key(job_id: str) -> str:
    """Per shard of the current attempt: ``done:<i>`` work done, ``n:<i>`` deliveries."""
    return f"{KEY_PREFIX}{job_id}:shards"


def idempotency_key(digest: str) -> str:
    return f"cnnviz:idem:{digest}"


def reuse_key(digest: str) -> str:
    """The latest job of a request (its fingerprint's digest), for serving repeats from it."""
    return f"cnnviz:reuse:{digest}"


def arrays_key(job_id: str) -> str:
    """The raw float tensors a job attached (safetensors bytes)."""
    return f"{KEY_PREFIX}{job_id}:arrays"


def checkpoint_key(job_id: str) -> str:
    """The latest checkpoint of a running job (bytes its kind wrote), for the next attempt."""
    return f"{KEY_PREFIX}{job_id}:checkpoint"


def partials_key(job_id: str) -> str:
    """Per shard of a job of several shards: its partial (JSON), kept across attempts."""
    return f"{KEY_PREFIX}{job_id}:partials"


LEASES_KEY = "cnnviz:leases"
"""The leases of running jobs and shards: a sorted set of ``<id>`` (a job's own lease) and
``<id>#<shard>`` (a shard's), scored by when they lapse (Redis time, in milliseconds)."""


def lease_member(job_id: str, shard: int | None = None) -> str:
    return job_id if shard is None else f"{job_id}#{shard}"


def owner_key(owner: str) -> str:
    """The ids of an owner's jobs that may be unfinished (finished ones are pruned lazily)."""
    return f"cnnviz:owner:{owner}:active"


def _keys(job_id: str) -> list[str]:
    """Every key of one job, the record first."""
    return [
        record_key(job_id),
        result_key(job_id),
        preview_key(job_id),
        shards_key(job_id),
        arrays_key(job_id),
        checkpoint_key(job_id),
        partials_key(job_id),
    ]


# A Lua condition on a record's status ``st``: the job has finished.
_FINISHED = " or ".join(f"st == '{s.value}'" for s in JobStatus if s.finished)
# A Lua guard: return 0 unless the record is running under attempt ARGV[1].
_CURRENT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
"""

# Lua: Redis's own clock in milliseconds, so that leases written by workers and read by the
# sweeper compare on one clock whatever the machines' clocks say.
_NOW_MS = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# ---- the API's side ----

# KEYS: record, idempotency key or '', the owner's active set. ARGV: ttl, fingerprint, job id,
# most active jobs of the owner (0: no limit), then field/value pairs.
# With a live idempotency key: {'exists', job id, fingerprint}; over the owner's quota:
# {'quota', active count, ''}; else the record is written.
_CREATE = f"""
if KEYS[2] ~= '' then
  local known = redis.call('HMGET', KEYS[2], 'job', 'fingerprint')
  if known[1] and redis.call('EXISTS', '{KEY_PREFIX}' .. known[1]) == 1 then
    return {{'exists', known[1], known[2]}}
  end
end
local quota = tonumber(ARGV[4])
if quota > 0 then
  local active = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local st = redis.call('HGET', '{KEY_PREFIX}' .. id, 'status')
    if st == 'queued' or st == 'running' then
      active = active + 1
    else
      redis.call('SREM', KEYS[3], id)
    end
  end
  if active >= quota then return {{'quota', tostring(active), ''}} end
end
if KEYS[2] ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'job', ARGV[3], 'fingerprint', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return {{'created', ARGV[3], ARGV[2]}}
"""

# KEYS: record, leases. ARGV: now, ttl. A queued job is cancelled here, and so is a running
# one whose lease lapsed (nothing runs it to see the flag); a running one at its next check.
# 1: done; 2: the job ended here (its callback is due); 0: unknown.
_CANCEL = f"""{_NOW_MS}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if {_FINISHED} then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
local lapsed = false
if st == 'running' then
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '')
  lapsed = due ~= nil and due <= now_ms
end
if st == 'queued' or lapsed then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  if st == 'running' then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return 2
  end
end
return 1
"""

# KEYS: every key of the job. Returns 0 unknown, 1 deleted, 2 not finished.
_DELETE = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if not ({_FINISHED}) then return 2 end
{forget_script("redis.call('HGET', KEYS[1], 'id')")}
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', unpack(KEYS))
return 1
"""

# KEYS: every key of the job. Unconditional: for a job that never reached the queue.
_DISCARD = """
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', unpack(KEYS))
return 1
"""

# ---- the runner's side ----

# KEYS: record, shards, leases. ARGV: now, max attempts, error JSON for too many attempts,
# ttl, holder (the delivery's task id), lease ms, lease member.
# A delivery takes the job over from a running attempt only when that attempt's lease lapsed
# or it is the same delivery again (Celery gives a killed pool child's message back at once):
# a second message of a job that runs under a live lease (a restored original after the
# sweeper sent the job again) does not stop it.
_START = f"""{_NOW_MS}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {{'gone', 0}} end
if {_FINISHED} then return {{'finished', 0}} end
local function close(status)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[7])
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  close('cancelled')
  return {{'cancelled', 0}}
end
if st == 'running' and redis.call('HGET', KEYS[1], 'holder') ~= ARGV[5] then
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if due > now_ms then return {{'leased', 0}} end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempt > tonumber(ARGV[2]) then
  close('failed')
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
  return {{'exhausted', attempt}}
end
local deadline = now_ms + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'status', 'running', 'holder', ARGV[5], 'lease_until', deadline)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('ZADD', KEYS[3], deadline, ARGV[7])
-- Progress stays: the attempt resumes from the last checkpoint and reports from there.
-- Delivery counts are per attempt; the work done by shards whose partials are kept stays.
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 2) == 'n:' or string.sub(field, 1, 7) == 'holder:' then
    redis.call('HDEL', KEYS[2], field)
  end
end
return {{'run', attempt}}
"""

# KEYS: record, leases. ARGV: attempt, lease member, lease ms, shard or '', holder or ''.
# 1: renewed; 0: the attempt (or this delivery of the shard) must stop.
_RENEW = f"""{_CURRENT}{_NOW_MS}
local deadline = now_ms + tonumber(ARGV[3])
if ARGV[4] == '' then
  redis.call('HSET', KEYS[1], 'lease_until', deadline)
else
  local shards = KEYS[1] .. ':shards'
  if redis.call('HGET', shards, 'holder:' .. ARGV[4]) ~= ARGV[5] then return 0 end
  -- The job's lease is the latest of its shards': cancel ends it at once only when all lapsed.
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if deadline > due then redis.call('HSET', KEYS[1], 'lease_until', deadline) end
end
redis.call('ZADD', KEYS[2], deadline, ARGV[2])
return 1
"""

# KEYS: record, leases. ARGV: attempt, lease member.
_RELEASE = f"""{_CURRENT}
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: record, checkpoint. ARGV: attempt, the bytes. Only the current attempt checkpoints.
_SAVE_CHECKPOINT = f"""{_CURRENT}
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: leases. ARGV: most claims, ttl of a record that ends here, lease ms.
# Every lapsed lease, claimed once (whoever runs the sweep: one API or many). A job's own
# lease puts the job back to queued for its next attempt; a shard's frees the shard; a job
# asked to stop is cancelled. A claim to send something again keeps its member, due a lease
# from now times the sends so far (at most 10): if what was sent has not started by then
# (the send was lost, or waits behind a long queue), it is claimed and sent again, less and
# less often; copies are harmless (a start under a live lease is refused), only wasteful.
# Returns {id, action, shard, shards, attempt, delivery} per claim, where delivery numbers
# the sends of this job (for a fresh task id).
_SWEEP = f"""{_NOW_MS}
local claims = {{}}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0,
                                   tonumber(ARGV[1]))) do
  local sep = string.find(member, '#', 1, true)
  local id = sep and string.sub(member, 1, sep - 1) or member
  local shard = sep and string.sub(member, sep + 1) or ''
  local rec = '{KEY_PREFIX}' .. id
  local st = redis.call('HGET', rec, 'status')
  local attempt = redis.call('HGET', rec, 'attempts') or '0'
  local shards = redis.call('HGET', rec, 'shards') or '1'
  if st == 'running' and redis.call('HGET', rec, 'cancel') == '1' then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HSET', rec, 'status', 'cancelled', 'finished_at', now_ms / 1000)
    redis.call('EXPIRE', rec, ARGV[2])
    table.insert(claims, {{id, 'cancelled', '0', shards, attempt, '0'}})
  elseif (st == 'running' or st == 'queued') and shard == '' then
    if st == 'running' then
      redis.call('HSET', rec, 'status', 'queued')
      redis.call('HDEL', rec, 'holder', 'lease_until')
    end
    local delivery = redis.call('HINCRBY', rec, 'resent', 1)
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]) * math.min(delivery, 10), member)
    table.insert(claims, {{id, 'job', '0', shards, attempt, tostring(delivery)}})
  elseif st == 'running' then
    redis.call('HDEL', rec .. ':shards', 'holder:' .. shard)
    local delivery = redis.call('HINCRBY', rec, 'resent', 1)
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]) * math.min(delivery, 10), member)
    table.insert(claims, {{id, 'shard', shard, shards, attempt, tostring(delivery)}})
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claims
"""

# KEYS: record, preview. ARGV: attempt, progress JSON, preview PNG or ''.
_PROGRESS = f"""{_CURRENT}
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[3] ~= '' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  else redis.call('SET', KEYS[2], ARGV[3]) end
end
return 1
"""

# KEYS: record, arrays. ARGV: attempt, the bytes, ttl. Only the current attempt attaches.
_ATTACH = f"""{_CURRENT}
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS: record, shards. ARGV: attempt, shard, done, total.
# The job's progress is the sum of its shards' work: a shard delivered again starts from 0.
_SHARD_PROGRESS = f"""{_CURRENT}
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local sum = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'done:' then sum = sum + tonumber(fields[i + 1]) end
end
local total = tonumber(ARGV[4])
if sum > total then sum = total end
redis.call('HSET', KEYS[1], 'progress',
  string.format('{{"step":%d,"total":%d,"unit":"images"}}', sum, total))
return 1
"""

# KEYS: record, shards, partials, leases. ARGV: attempt, shard, max deliveries, now, error
# JSON, ttl, holder, lease ms, lease member.
# 'run', 'done' (its partial is kept), 'leased' (another delivery runs it) or 'stop' (not
# current, cancelled, or delivered too often: the job fails).
_START_SHARD = f"""
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 'stop' end
{_NOW_MS}
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'stop' end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 'done' end
local holder = redis.call('HGET', KEYS[2], 'holder:' .. ARGV[2])
if holder and holder ~= ARGV[7] then
  local due = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[9]) or '0')
  if due > now_ms then return 'leased' end
end
local n = redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[2], 1)
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], 0, 'holder:' .. ARGV[2], ARGV[7])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if n > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[4], 'error', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('ZREM', KEYS[4], ARGV[9])
  return 'stop'
end
local deadline = now_ms + tonumber(ARGV[8])
redis.call('ZADD', KEYS[4], deadline, ARGV[9])
local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if deadline > due then redis.call('HSET', KEYS[1], 'lease_until', deadline) end
return 'run'
"""

# KEYS: record, partials, leases. ARGV: attempt, shard, partial JSON, shards, the shard's
# lease member, lease ms, the job's lease member.
# 0: not current (dropped); 1: kept, more to come; 2: kept, and it was the last: merge now;
# 3: another delivery had kept it already.
_STORE_PARTIAL = f"""{_CURRENT}{_NOW_MS}
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 3 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  -- The merge holds the job's own lease: lost mid-merge, the job is sent again and its next
  -- attempt, finding every partial kept, only merges.
  local deadline = now_ms + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], deadline, ARGV[7])
  redis.call('HSET', KEYS[1], 'lease_until', deadline)
  return 2
end
return 1
"""

# KEYS: record. ARGV: attempt, shards. The number of shards, for the sweeper.
_PLAN = f"""{_CURRENT}
redis.call('HSET', KEYS[1], 'shards', ARGV[2])
return 1
"""

# KEYS: every key of the job (record, result, preview, shards, arrays, checkpoint, partials),
# then the leases. ARGV: attempt, status, now, error JSON or '', result JSON or '', ttl, the
# byte cap of finished jobs' parts (0: none; see redis_cap).
_FINISH = f"""{_CURRENT}
if ARGV[2] == 'succeeded' then
  if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'EX', ARGV[6]) then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[8], redis.call('HGET', KEYS[1], 'id'))
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('EXPIRE', idem, ARGV[6]) end
local CAP, NOW = tonumber(ARGV[7]), ARGV[3]
{keep_script(KEY_PREFIX, "KEYS[1]", "KEYS[2]", "KEYS[3]", "KEYS[5]")}
return 1
"""


class RedisRecords:
    """:class:`~workers.records.base.JobRecords` in Redis, for the API and the workers alike.

    ``max_attempts`` bounds deliveries of one job (and of one shard) before it fails as
    ``worker_lost``. ``lease_s`` is how long a lease lasts from its last renewal: a worker
    renews it every few seconds while it runs the job, and a job whose lease lapsed is the
    sweeper's (:meth:`sweep`). ``results_max_bytes`` caps what finished jobs keep (see
    :mod:`.redis_cap`; None: only Redis's ``maxmemory``). The API passes short timeouts and
    no retries, so that a request gets a clear 503 at once while Redis is down; a worker
    retries its final write for ``finish_retry_s``.
    """

    blocking = True

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        max_attempts: int = 3,
        ttl_seconds: int = 7 * 24 * 3600,
        stop_check_interval_s: float = 0.25,
        finish_retry_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 10.0,
        lease_s: float = 30.0,
        results_max_bytes: int | None = None,
    ) -> None:
        if isinstance(url_or_client, str):
            url_or_client = redis.Redis.from_url(
                url_or_client,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
            )
        self._client = url_or_client
        self._max_attempts = max_attempts
        self._ttl = ttl_seconds
        self._stop_interval = stop_check_interval_s
        self._finish_retry_s = finish_retry_s
        self._lease_ms = int(lease_s * 1000)
        self._results_max_bytes = results_max_bytes
        # Per (job, shard): the task id of the delivery this process runs, for its renewals.
        self._holders: dict[tuple[str, int], str] = {}
        script = self._client.register_script
        self._create = script(_CREATE)
        self._cancel = script(_CANCEL)
        self._delete = script(_DELETE)
        self._discard = script(_DISCARD)
        self._start = script(_START)
        self._progress = script(_PROGRESS)
        self._shard_progress = script(_SHARD_PROGRESS)
        self._start_shard = script(_START_SHARD)
        self._finish = script(_FINISH)
        self._attach = script(_ATTACH)
        self._renew = script(_RENEW)
        self._release = script(_RELEASE)
        self._save_checkpoint = script(_SAVE_CHECKPOINT)
        self._sweep = script(_SWEEP)
        self._store_partial = script(_STORE_PARTIAL)
        self._plan = script(_PLAN)
        # Per (job, attempt): when the flag was last read, and whether the attempt must stop.
        self._checked: dict[tuple[str, int], float] = {}
        self._stopped: set[tuple[str, int]] = set()

    def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise RecordsUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # ---- the API's side ----

    def create(
        self,
        record: JobRecord,
        ttl_seconds: int,
        idempotency: Idempotency | None,
        max_active: int | None = None,
    ) -> tuple[JobRecord, bool]:
        idem = idempotency_key(idempotency.digest) if idempotency else None
        if idem is not None:
            record = record.model_copy(update={"idem": idem})
        pairs = [item for field in record.to_fields().items() for item in field]
        outcome, job_id, fingerprint = self._call(
            self._create,
            keys=[record_key(record.id), idem or "", owner_key(record.owner)],
            args=[
                ttl_seconds,
                idempotency.fingerprint if idempotency else "",
                record.id,
                max_active or 0,
                *pairs,
            ],
        )
        if outcome == b"created":
            return record, True
        if outcome == b"quota":
            raise QuotaExceeded(record.owner, int(job_id))
        if idempotency is None or fingerprint.decode() != idempotency.fingerprint:
            raise IdempotencyConflict(idempotency.digest if idempotency else "")
        return self.get(job_id.decode()), False

    def get(self, job_id: str) -> JobRecord:
        fields = self._call(self._client.hgetall, record_key(job_id))
        if not fields:
            raise JobNotFound(job_id)
        return JobRecord.from_fields(fields)

    def result(self, job_id: str) -> str | None:
        raw = self._kept(job_id, result_key(job_id))
        return raw.decode() if raw else None

    def preview(self, job_id: str) -> bytes | None:
        return self._kept(job_id, preview_key(job_id))

    def arrays(self, job_id: str) -> bytes | None:
        return self._kept(job_id, arrays_key(job_id))

    def _kept(self, job_id: str, key: str) -> bytes | None:
        """A part of a job; ResultExpired once the byte cap dropped it (redis_cap)."""

        def read() -> tuple[bytes | None, bytes | None]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(key)
            pipe.hget(record_key(job_id), "expired")
            raw, expired = pipe.execute()
            return raw, expired

        raw, expired = self._call(read)
        if raw is None and expired == b"1":
            raise ResultExpired(job_id)
        return raw

    def cancel(self, job_id: str) -> JobRecord:
        outcome = self._call(
            self._cancel,
            keys=[record_key(job_id), LEASES_KEY],
            args=[time.time(), self._ttl, lease_member(job_id)],
        )
        if not outcome:
            raise JobNotFound(job_id)
        return self.get(job_id)

    def sweep(self, limit: int = 100) -> list[Lapsed]:
        """Claim the leases that lapsed (at most ``limit``): what to send again, and the jobs
        that ended cancelled here. A claim is made once, whoever else sweeps."""
        claims = self._call(self._sweep, keys=[LEASES_KEY], args=[limit, self._ttl, self._lease_ms])
        return [
            Lapsed(
                job_id=job_id.decode(),
                action=action.decode(),
                shard=int(shard),
                shards=int(shards),
                attempt=int(attempt),
                delivery=int(delivery),
            )
            for job_id, action, shard, shards, attempt, delivery in claims
        ]

    def leases(self) -> dict[str, float]:
        """Every lease now held: its member and when it lapses (epoch seconds)."""
        raw = self._call(self._client.zrange, LEASES_KEY, 0, -1, withscores=True)
        return {member.decode(): score / 1000 for member, score in raw}

    def delete(self, job_id: str) -> None:
        outcome = self._call(self._delete, keys=_keys(job_id))
        if outcome == 0:
            raise JobNotFound(job_id)
        if outcome == 2:
            raise JobNotFinished(self.get(job_id))

    def discard(self, job_id: str) -> None:
        self._call(self._discard, keys=_keys(job_id))

    def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        self._call(self._client.set, reuse_key(digest), job_id, ex=ttl_seconds)

    def recall(self, digest: str) -> str | None:
        raw: bytes | None = self._call(self._client.get, reuse_key(digest))
        return raw.decode() if raw else None

    def ping(self) -> None:
        self._call(self._client.ping)

    def appendonly(self) -> bool | None:
        # Managed Redis often disables CONFIG: then persistence is unknown, not an error.
        try:
            config = self._client.config_get("appendonly")
        except (redis.RedisError, OSError):
            return None
        value = config.get("appendonly")
        return None if value is None else value in ("yes", b"yes")

    def close(self) -> None:
        self._client.close()

    def counts(self) -> dict[tuple[str, str], int]:
        # A scan of the records (each job's own key: the prefix and an id, no suffix), then
        # their kind and status in one round trip: fine at a scrape every few seconds.
        def scan() -> dict[tuple[str, str], int]:
            keys = [
                key
                for key in self._client.scan_iter(match=f"{KEY_PREFIX}*", count=1000)
                if b":" not in key[len(KEY_PREFIX) :]
            ]
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "kind", "status")
            counts: dict[tuple[str, str], int] = {}
            for kind, status in pipe.execute():
                if kind is None or status is None:  # expired between the scan and the read
                    continue
                label = (kind.decode(), status.decode())
                counts[label] = counts.get(label, 0) + 1
            return counts

        result: dict[tuple[str, str], int] = self._call(scan)
        return result

    def observe_duration(self, kind: str, status: JobStatus, seconds: float) -> None:
        prefix = f"{kind}|{status.value}|"
        one = Durations()
        one.observe(seconds)
        pipe = self._client.pipeline(transaction=True)  # a scrape sees all of it or none
        for label, count in zip(bucket_labels(), one.counts, strict=True):
            if count:
                pipe.hincrby(STATS_KEY, prefix + label, 1)
        pipe.hincrbyfloat(STATS_KEY, prefix + "sum", seconds)
        try:
            self._call(pipe.execute)
        except RecordsUnavailable as exc:
            log.warning("job duration not counted: %s", exc)

    def durations(self) -> dict[tuple[str, str], Durations]:
        raw: dict[bytes, bytes] = self._call(self._client.hgetall, STATS_KEY)
        labels = bucket_labels()
        found: dict[tuple[str, str], Durations] = {}
        for name, value in raw.items():
            kind, status, label = name.decode().rsplit("|", 2)
            durations = found.setdefault((kind, status), Durations())
            if label == "sum":
                durations.sum = float(value)
            elif label in labels:
                durations.counts[labels.index(label)] = int(value)
        return found

    # ---- the runner's side ----

    def start(self, job_id: str, holder: str = "") -> int | None:
        outcome, attempt = self._call(
            self._start,
            keys=[record_key(job_id), shards_key(job_id), LEASES_KEY],
            args=[
                time.time(),
                self._max_attempts,
                lost_error(self._max_attempts).model_dump_json(),
                self._ttl,
                holder,
                self._lease_ms,
                lease_member(job_id),
            ],
        )
        if outcome != b"run":
            log.info("job %s not started: %s", job_id, outcome.decode())
            return None
        return int(attempt)

    def renew(self, job_id: str, attempt: int, shard: int | None = None) -> bool:
        holder = "" if shard is None else self._holders.get((job_id, shard), "")
        try:
            renewed = self._renew(
                keys=[record_key(job_id), LEASES_KEY],
                args=[
                    attempt,
                    lease_member(job_id, shard),
                    self._lease_ms,
                    "" if shard is None else shard,
                    holder,
                ],
            )
        except redis.RedisError as exc:
            # Redis away for a moment: go on; the lease lapses only if it stays away.
            log.warning("job %s: lease not renewed: %s", job_id, exc)
            return True
        if not renewed:
            self._stopped.add((job_id, attempt))
        return bool(renewed)

    def release(self, job_id: str, attempt: int) -> None:
        self._call(self._release, keys=[record_key(job_id), LEASES_KEY], args=[attempt, job_id])

    def plan(self, job_id: str, attempt: int, shards: int) -> None:
        """Note how many shards the attempt has (the sweeper sends a lapsed one again)."""
        self._call(self._plan, keys=[record_key(job_id)], args=[attempt, shards])

    def save_checkpoint(self, job_id: str, attempt: int, data: bytes) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._save_checkpoint,
            keys=[record_key(job_id), checkpoint_key(job_id)],
            args=[attempt, data],
        )

    def checkpoint(self, job_id: str) -> bytes | None:
        raw: bytes | None = self._call(self._client.get, checkpoint_key(job_id))
        return raw

    def store_partial(
        self, job_id: str, attempt: int, shard: int, shards: int, partial: str
    ) -> bool:
        """Keep a shard's partial; True when it was the last one missing: merge now, under
        the job's own lease, which the caller then holds."""
        outcome = self._call(
            self._store_partial,
            keys=[record_key(job_id), partials_key(job_id), LEASES_KEY],
            args=[
                attempt,
                shard,
                partial,
                shards,
                lease_member(job_id, shard),
                self._lease_ms,
                lease_member(job_id),
            ],
        )
        self._holders.pop((job_id, shard), None)
        return bool(outcome == 2)

    def partials(self, job_id: str) -> dict[int, str]:
        """The partials kept so far, by shard."""
        raw = self._call(self._client.hgetall, partials_key(job_id))
        return {int(shard): value.decode() for shard, value in raw.items()}

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._progress,
            keys=[record_key(job_id), preview_key(job_id)],
            args=[attempt, progress.model_dump_json(), preview or b""],
        )

    def attach(self, job_id: str, attempt: int, data: bytes, ttl_seconds: int) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._attach,
            keys=[record_key(job_id), arrays_key(job_id)],
            args=[attempt, data, ttl_seconds],
        )

    def shard_progress(self, job_id: str, attempt: int, shard: int, done: int, total: int) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._shard_progress,
            keys=[record_key(job_id), shards_key(job_id)],
            args=[attempt, shard, done, total],
        )

    def _best_effort(self, job_id: str, attempt: int, script: Any, **call: Any) -> None:
        # Progress is best effort: a Redis hiccup must not fail a job that can still finish.
        try:
            written = script(**call)
        except redis.RedisError as exc:
            log.warning("job %s: progress not recorded: %s", job_id, exc)
            return
        if not written:
            self._stopped.add((job_id, attempt))  # cancelled, superseded or deleted

    def start_shard(
        self, job_id: str, attempt: int, shard: int, max_deliveries: int, holder: str = ""
    ) -> ShardStart:
        outcome = self._call(
            self._start_shard,
            keys=[record_key(job_id), shards_key(job_id), partials_key(job_id), LEASES_KEY],
            args=[
                attempt,
                shard,
                max_deliveries,
                time.time(),
                lost_error(max_deliveries).model_dump_json(),
                self._ttl,
                holder,
                self._lease_ms,
                lease_member(job_id, shard),
            ],
        )
        started = ShardStart(outcome.decode())
        if started == ShardStart.RUN:
            self._holders[(job_id, shard)] = holder
        return started

    def should_stop(self, job_id: str, attempt: int) -> bool:
        key = (job_id, attempt)
        now = time.monotonic()
        if key in self._stopped:
            return True
        if now - self._checked.get(key, -float("inf")) < self._stop_interval:
            return False
        self._checked[key] = now
        try:
            status, attempts, cancel = self._client.hmget(
                record_key(job_id), ["status", "attempts", "cancel"]
            )
        except redis.RedisError as exc:
            log.warning("job %s: cancel flag unreadable, going on: %s", job_id, exc)
            return False
        if status != b"running" or attempts != str(attempt).encode() or cancel == b"1":
            self._stopped.add(key)
            return True
        return False

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: str | None,
        error: JobError | None,
        ttl_seconds: int,
    ) -> bool:
        args = [
            attempt,
            status.value,
            time.time(),
            error.model_dump_json() if error else "",
            result or "",
            ttl_seconds,
            self._results_max_bytes or 0,
        ]
        deadline = time.monotonic() + self._finish_retry_s
        delay = 0.2
        while True:
            try:
                return bool(self._finish(keys=[*_keys(job_id), LEASES_KEY], args=args))
            except (redis.ConnectionError, redis.TimeoutError):
                # The script is idempotent: retrying after a lost reply cannot write twice.
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: Redis unreachable; retrying the final write", job_id)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def fail_running(self, job_id: str, error: JobError, ttl_seconds: int) -> bool:
        attempts = self._client.hget(record_key(job_id), "attempts")
        if attempts is None:
            return False
        return self.finish(job_id, int(attempts), JobStatus.FAILED, None, error, ttl_seconds)
