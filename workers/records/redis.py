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
    QuotaExceeded,
    RecordsUnavailable,
    lost_error,
)
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
    ]


# A Lua condition on a record's status ``st``: the job has finished.
_FINISHED = " or ".join(f"st == '{s.value}'" for s in JobStatus if s.finished)
# A Lua guard: return 0 unless the record is running under attempt ARGV[1].
_CURRENT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
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

# KEYS: record. ARGV: now. A queued job is cancelled here; a running one at its next check.
_CANCEL = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if {_FINISHED} then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
end
return 1
"""

# KEYS: every key of the job. Returns 0 unknown, 1 deleted, 2 not finished.
_DELETE = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if not ({_FINISHED}) then return 2 end
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

# KEYS: record, shards. ARGV: now, max attempts, error JSON for too many attempts, ttl.
_START = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {{'gone', 0}} end
if {_FINISHED} then return {{'finished', 0}} end
local function close(status)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  close('cancelled')
  return {{'cancelled', 0}}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempt > tonumber(ARGV[2]) then
  close('failed')
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
  return {{'exhausted', attempt}}
end
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'progress')
redis.call('DEL', KEYS[2])
return {{'run', attempt}}
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

# KEYS: record, shards. ARGV: attempt, shard, max deliveries, now, error JSON, ttl.
# 1: go on; 0: stop (not current, cancelled, or delivered too often: the job fails).
_START_SHARD = f"""{_CURRENT}
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 0 end
local n = redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[2], 1)
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], 0)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if n > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[4], 'error', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return 0
end
return 1
"""

# KEYS: record, result, preview, shards. ARGV: attempt, status, now, error JSON or '',
# result JSON or '', ttl.
_FINISH = f"""{_CURRENT}
if ARGV[2] == 'succeeded' then
  if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'EX', ARGV[6]) then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
redis.call('DEL', KEYS[4])
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('EXPIRE', idem, ARGV[6]) end
return 1
"""


class RedisRecords:
    """:class:`~workers.records.base.JobRecords` in Redis, for the API and the workers alike.

    ``max_attempts`` bounds deliveries of one job (and of one shard) before it fails as
    ``worker_lost``. The API passes short timeouts and no retries, so that a request gets a
    clear 503 at once while Redis is down; a worker retries its final write for
    ``finish_retry_s``.
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
        raw: bytes | None = self._call(self._client.get, result_key(job_id))
        return raw.decode() if raw else None

    def preview(self, job_id: str) -> bytes | None:
        raw: bytes | None = self._call(self._client.get, preview_key(job_id))
        return raw

    def arrays(self, job_id: str) -> bytes | None:
        raw: bytes | None = self._call(self._client.get, arrays_key(job_id))
        return raw

    def cancel(self, job_id: str) -> JobRecord:
        if not self._call(self._cancel, keys=[record_key(job_id)], args=[time.time()]):
            raise JobNotFound(job_id)
        return self.get(job_id)

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

    def start(self, job_id: str) -> int | None:
        outcome, attempt = self._call(
            self._start,
            keys=[record_key(job_id), shards_key(job_id)],
            args=[
                time.time(),
                self._max_attempts,
                lost_error(self._max_attempts).model_dump_json(),
                self._ttl,
            ],
        )
        if outcome != b"run":
            log.info("job %s not started: %s", job_id, outcome.decode())
            return None
        return int(attempt)

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

    def start_shard(self, job_id: str, attempt: int, shard: int, max_deliveries: int) -> bool:
        return bool(
            self._call(
                self._start_shard,
                keys=[record_key(job_id), shards_key(job_id)],
                args=[
                    attempt,
                    shard,
                    max_deliveries,
                    time.time(),
                    lost_error(max_deliveries).model_dump_json(),
                    self._ttl,
                ],
            )
        )

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
        ]
        deadline = time.monotonic() + self._finish_retry_s
        delay = 0.2
        while True:
            try:
                return bool(self._finish(keys=_keys(job_id), args=args))
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
