"""Job records in Redis, for the Celery transport: the API's side (the workers' is
:mod:`workers.records`; the layout is in :mod:`schemas.jobs`).

Every key has a TTL: ``job_ttl_seconds`` from creation, and again from the moment the job
finishes. Transitions are Lua scripts, so a cancel racing a worker's start, or two requests
with one idempotency key, resolve atomically.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from schemas.jobs import (
    KEY_PREFIX,
    LUA_FINISHED,
    JobRecord,
    OptimizationResult,
    idempotency_key,
    preview_key,
    record_key,
    result_key,
    reuse_key,
)
from service.jobs.store import (
    Idempotency,
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    StoreUnavailable,
)

_FINISHED = LUA_FINISHED

# KEYS: record, idempotency key or ''. ARGV: ttl, fingerprint, job id, then field/value pairs.
# With a live idempotency key: {'exists', job id, fingerprint}; else the record is written.
_CREATE = f"""
if KEYS[2] ~= '' then
  local known = redis.call('HMGET', KEYS[2], 'job', 'fingerprint')
  if known[1] and redis.call('EXISTS', '{KEY_PREFIX}' .. known[1]) == 1 then
    return {{'exists', known[1], known[2]}}
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'job', ARGV[3], 'fingerprint', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
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

# KEYS: record, result, preview. Returns 0 unknown, 1 deleted, 2 not finished.
_DELETE = f"""
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if not ({_FINISHED}) then return 2 end
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""

# KEYS: record, result, preview. Unconditional: for a job that never reached the queue.
_DISCARD = """
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


class RedisStore:
    """A :class:`~service.jobs.store.JobStore` on Redis (asyncio client)."""

    def __init__(self, url: str, connect_timeout_s: float = 2.0, timeout_s: float = 5.0) -> None:
        # No retries with backoff inside a request: when Redis is down the client gets a
        # clear 503 at once and retries itself; the pool reconnects when Redis is back.
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._create = self._client.register_script(_CREATE)
        self._cancel = self._client.register_script(_CANCEL)
        self._delete = self._client.register_script(_DELETE)
        self._discard = self._client.register_script(_DISCARD)

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def create(
        self, record: JobRecord, ttl_seconds: int, idempotency: Idempotency | None
    ) -> tuple[JobRecord, bool]:
        idem = idempotency_key(idempotency.digest) if idempotency else None
        if idem is not None:
            record = record.model_copy(update={"idem": idem})
        pairs = [item for field in record.to_fields().items() for item in field]
        outcome, job_id, fingerprint = await self._call(
            self._create(
                keys=[record_key(record.id), idem or ""],
                args=[
                    ttl_seconds,
                    idempotency.fingerprint if idempotency else "",
                    record.id,
                    *pairs,
                ],
            )
        )
        if outcome == b"created":
            return record, True
        if idempotency is None or fingerprint.decode() != idempotency.fingerprint:
            raise IdempotencyConflict(idempotency.digest if idempotency else "")
        return await self.get(job_id.decode()), False

    async def get(self, job_id: str) -> JobRecord:
        fields = await self._call(self._client.hgetall(record_key(job_id)))
        if not fields:
            raise JobNotFound(job_id)
        return JobRecord.from_fields(fields)

    async def result(self, job_id: str) -> OptimizationResult | None:
        raw = await self._call(self._client.get(result_key(job_id)))
        return OptimizationResult.model_validate_json(raw) if raw else None

    async def preview(self, job_id: str) -> bytes | None:
        raw: bytes | None = await self._call(self._client.get(preview_key(job_id)))
        return raw

    async def cancel(self, job_id: str) -> JobRecord:
        if not await self._call(self._cancel(keys=[record_key(job_id)], args=[time.time()])):
            raise JobNotFound(job_id)
        return await self.get(job_id)

    async def delete(self, job_id: str) -> None:
        keys = [record_key(job_id), result_key(job_id), preview_key(job_id)]
        outcome = await self._call(self._delete(keys=keys))
        if outcome == 0:
            raise JobNotFound(job_id)
        if outcome == 2:
            raise JobNotFinished(await self.get(job_id))

    async def discard(self, job_id: str) -> None:
        keys = [record_key(job_id), result_key(job_id), preview_key(job_id)]
        await self._call(self._discard(keys=keys))

    async def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        await self._call(self._client.set(reuse_key(digest), job_id, ex=ttl_seconds))

    async def recall(self, digest: str) -> str | None:
        raw: bytes | None = await self._call(self._client.get(reuse_key(digest)))
        return raw.decode() if raw else None

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
