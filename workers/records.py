"""The worker's side of a job record in Redis: start, progress, the cancel check, finish.

The record's layout is in :mod:`schemas.jobs`; the service creates records, cancels and
deletes them, and the worker moves them along. Each transition is one Lua script, so it is
atomic, and every write after the start is fenced by the attempt number the start returned:

* a job redelivered after its worker was lost starts attempt 2; anything attempt 1 still
  writes (its child may outlive its parent for a moment) is ignored, and attempt 1 stops at
  its next cancel check;
* the final state is written once: the result with ``SET NX`` and the status only while the
  record is ``running`` under that attempt, so a job never reports two runs or two results;
* a job redelivered after it finished, or cancelled while queued, does not start at all.

Scripts touch the idempotency key named in the record as well, which a Redis Cluster would
refuse; cnnviz uses one Redis.
"""

from __future__ import annotations

import logging
import time

import redis

from schemas.jobs import (
    LUA_FINISHED,
    JobError,
    JobStatus,
    OptimizationResult,
    Progress,
    preview_key,
    record_key,
    result_key,
)

log = logging.getLogger(__name__)

_FINISHED = LUA_FINISHED

# KEYS: record. ARGV: now, max attempts, error JSON for too many attempts, ttl.
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
return {{'run', attempt}}
"""

# KEYS: record, preview. ARGV: attempt, progress JSON, preview PNG or ''.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[3] ~= '' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  else redis.call('SET', KEYS[2], ARGV[3]) end
end
return 1
"""

# KEYS: record, result, preview. ARGV: attempt, status, now, error JSON or '',
# result JSON or '', ttl.
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
if ARGV[2] == 'succeeded' then
  if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'EX', ARGV[6]) then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('EXPIRE', idem, ARGV[6]) end
return 1
"""


class RedisRecorder:
    """A :class:`workers.run.Recorder` on the job records in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        max_attempts: int,
        ttl_seconds: int,
        stop_check_interval_s: float = 0.25,
        finish_retry_s: float = 30.0,
    ) -> None:
        self._client = client
        self._max_attempts = max_attempts
        self._ttl = ttl_seconds
        self._stop_interval = stop_check_interval_s
        self._finish_retry_s = finish_retry_s
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)
        # Per (job, attempt): when the flag was last read, and whether the attempt must stop.
        self._checked: dict[tuple[str, int], float] = {}
        self._stopped: set[tuple[str, int]] = set()

    def start(self, job_id: str) -> int | None:
        error = JobError(
            code="worker_lost",
            message=f"the job was delivered {self._max_attempts} times and each time its "
            "worker was lost (killed, out of memory, or the machine went away)",
        )
        outcome, attempt = self._start(
            keys=[record_key(job_id)],
            args=[time.time(), self._max_attempts, error.model_dump_json(), self._ttl],
        )
        if outcome != b"run":
            log.info("job %s not started: %s", job_id, outcome.decode())
            return None
        return int(attempt)

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        # Progress is best effort: a Redis hiccup must not fail a job that can still finish.
        try:
            written = self._progress(
                keys=[record_key(job_id), preview_key(job_id)],
                args=[attempt, progress.model_dump_json(), preview or b""],
            )
        except redis.RedisError as exc:
            log.warning("job %s: progress not recorded: %s", job_id, exc)
            return
        if not written:
            self._stopped.add((job_id, attempt))  # cancelled, superseded or deleted

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

    def fail_running(self, job_id: str, error: JobError) -> bool:
        """End the current attempt of a running job as failed, from outside that attempt.

        For the worker's parent when it killed the child running the job.
        """
        attempts = self._client.hget(record_key(job_id), "attempts")
        if attempts is None:
            return False
        return self.finish(job_id, int(attempts), JobStatus.FAILED, None, error, self._ttl)

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: OptimizationResult | None,
        error: JobError | None,
        ttl_seconds: int,
    ) -> bool:
        args = [
            attempt,
            status.value,
            time.time(),
            error.model_dump_json() if error else "",
            result.model_dump_json() if result else "",
            ttl_seconds,
        ]
        keys = [record_key(job_id), result_key(job_id), preview_key(job_id)]
        deadline = time.monotonic() + self._finish_retry_s
        delay = 0.2
        while True:
            try:
                return bool(self._finish(keys=keys, args=args))
            except redis.ConnectionError:
                # The script is idempotent: retrying after a lost reply cannot write twice.
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: Redis unreachable; retrying the final write", job_id)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
