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
    NO_CONDITIONS,
    Conditions,
    Cursor,
    Ending,
    JobFilter,
    Lapsed,
    ShardStart,
    lost_error,
)
from workers.records.errors import (
    IdempotencyConflict,
    JobNotFinished,
    JobNotFound,
    QuotaExceeded,
    RecordsUnavailable,
)
from workers.records.redis_cap import read_kept
from workers.records.redis_fields import from_fields, to_fields
from workers.records.redis_keys import (
    LEASES_KEY,
    STATS_KEY,
    Part,
    blob_key,
    idempotency_key,
    job_keys,
    lease_member,
    owner_jobs_key,
    owner_key,
    part_key,
    record_key,
    reuse_key,
)
from workers.records.redis_outbox import RedisOutbox
from workers.records.redis_reads import count_jobs, owned_jobs, read_durations
from workers.records.redis_scripts import script_names, script_source
from workers.records.stats import Durations, bucket_labels
from workers.records.stops import StopChecks
from workers.records.verdicts import Verdict, from_redis, redis_fields, redis_key

log = logging.getLogger(__name__)


class RedisRecords:
    """:class:`~workers.records.base.JobRecords` in Redis, for the API and the workers alike.

    ``max_attempts`` bounds deliveries of one job (and of one shard) before it fails as
    ``worker_lost``. ``lease_s`` is how long a lease lasts from its last renewal: a worker
    renews it every few seconds while it runs the job, and a job whose lease lapsed is the
    sweeper's (:meth:`sweep`). The API passes short timeouts and no health check, so that a
    request gets a clear 503 soon while Redis is down or stalled (a connection idle past
    ``health_check_interval_s`` is pinged first, which doubles the wait on a stalled Redis);
    a worker retries its final write for ``finish_retry_s``.
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
        health_check_interval_s: int = 30,
    ) -> None:
        if isinstance(url_or_client, str):
            url_or_client = redis.Redis.from_url(
                url_or_client,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),
                health_check_interval=health_check_interval_s,
            )
        self._client = url_or_client
        self._max_attempts = max_attempts
        self._ttl = ttl_seconds
        self._finish_retry_s = finish_retry_s
        self._lease_ms = int(lease_s * 1000)
        self._results_max_bytes = results_max_bytes  # see redis_cap
        # Per (job, shard): the task id of the delivery this process runs, for its renewals.
        self._holders: dict[tuple[str, int], str] = {}
        # Each transition, by its script's name (a file in lua/).
        self._scripts = {
            name: self._client.register_script(script_source(name)) for name in script_names()
        }
        # Per (job, attempt): when the flag was last read, and whether the attempt must stop.
        self._stops = StopChecks(stop_check_interval_s)
        self.callbacks = RedisOutbox(self._scripts, self._call)

    def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise RecordsUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # ---- the API's side ----

    def create(
        self, record: JobRecord, ttl_seconds: int, conditions: Conditions = NO_CONDITIONS
    ) -> tuple[JobRecord, bool]:
        idempotency = conditions.idempotency
        idem = idempotency_key(idempotency.digest) if idempotency else None
        if idem is not None:
            record = record.model_copy(update={"idem": idem})
        pairs = [item for field in to_fields(record).items() for item in field]
        outcome, job_id, fingerprint = self._call(
            self._scripts["create"],
            keys=[
                record_key(record.id),
                idem or "",
                owner_key(record.owner),
                owner_jobs_key(record.owner),
            ],
            args=[
                ttl_seconds,
                idempotency.fingerprint if idempotency else "",
                record.id,
                conditions.max_active or 0,
                repr(record.created_at),
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
        return from_fields(fields)

    def result(self, job_id: str) -> str | None:
        raw = self._call(read_kept, self._client, record_key(job_id), part_key(job_id, Part.RESULT))
        return raw.decode() if raw else None

    def preview(self, job_id: str) -> bytes | None:
        return self._call(
            read_kept, self._client, record_key(job_id), part_key(job_id, Part.PREVIEW)
        )

    def arrays(self, job_id: str) -> bytes | None:
        return self._call(
            read_kept, self._client, record_key(job_id), part_key(job_id, Part.ARRAYS)
        )

    def cancel(self, job_id: str) -> JobRecord:
        outcome = self._call(
            self._scripts["cancel"],
            keys=[record_key(job_id), LEASES_KEY],
            args=[time.time(), self._ttl, lease_member(job_id)],
        )
        if not outcome:
            raise JobNotFound(job_id)
        return self.get(job_id)

    def sweep(self, limit: int = 100) -> list[Lapsed]:
        """Claim the leases that lapsed (at most ``limit``): what to send again, and the jobs
        that ended cancelled here. A claim is made once, whoever else sweeps."""
        claims = self._call(
            self._scripts["sweep"], keys=[LEASES_KEY], args=[limit, self._ttl, self._lease_ms]
        )
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
        outcome = self._call(self._scripts["delete"], keys=job_keys(job_id))
        if outcome == 0:
            raise JobNotFound(job_id)
        if outcome == 2:
            raise JobNotFinished(self.get(job_id))

    def discard(self, job_id: str) -> None:
        self._call(self._scripts["discard"], keys=job_keys(job_id))

    def remember(self, digest: str, job_id: str, ttl_seconds: int) -> None:
        self._call(self._client.set, reuse_key(digest), job_id, ex=ttl_seconds)

    def recall(self, digest: str) -> str | None:
        raw: bytes | None = self._call(self._client.get, reuse_key(digest))
        return raw.decode() if raw else None

    def keep_verdicts(self, model: str, weights: str, verdicts: list[Verdict]) -> None:
        self._call(self._client.hset, redis_key(model, weights), mapping=redis_fields(verdicts))

    def verdicts(self, model: str, weights: str) -> dict[tuple[str, str], bool]:
        return from_redis(self._call(self._client.hgetall, redis_key(model, weights)))

    def put_blob(self, digest: str, data: bytes, ttl_seconds: int) -> None:
        self._call(self._client.set, blob_key(digest), data, ex=ttl_seconds)

    def blob(self, digest: str) -> bytes | None:
        data: bytes | None = self._call(self._client.get, blob_key(digest))
        return data

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

    def owned(
        self, owner: str, chosen: JobFilter, before: Cursor | None, limit: int
    ) -> list[JobRecord]:
        return self._call(owned_jobs, self._client, owner, chosen, before, limit)

    def counts(self) -> dict[tuple[str, str], int]:
        return self._call(count_jobs, self._client)

    def durations(self) -> dict[tuple[str, str], Durations]:
        return read_durations(self._call(self._client.hgetall, STATS_KEY))

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

    # ---- the runner's side ----

    def start(self, job_id: str, holder: str = "") -> int | None:
        outcome, attempt = self._call(
            self._scripts["start"],
            keys=[record_key(job_id), part_key(job_id, Part.SHARDS), LEASES_KEY],
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
            renewed = self._scripts["renew"](
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
            self._stops.stop(job_id, attempt)
        return bool(renewed)

    def release(self, job_id: str, attempt: int) -> None:
        self._call(
            self._scripts["release"], keys=[record_key(job_id), LEASES_KEY], args=[attempt, job_id]
        )

    def plan(self, job_id: str, attempt: int, shards: int) -> None:
        """Note how many shards the attempt has (the sweeper sends a lapsed one again)."""
        self._call(self._scripts["plan"], keys=[record_key(job_id)], args=[attempt, shards])

    def save_checkpoint(self, job_id: str, attempt: int, data: bytes) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._scripts["save_checkpoint"],
            keys=[record_key(job_id), part_key(job_id, Part.CHECKPOINT)],
            args=[attempt, data],
        )

    def checkpoint(self, job_id: str) -> bytes | None:
        raw: bytes | None = self._call(self._client.get, part_key(job_id, Part.CHECKPOINT))
        return raw

    def store_partial(
        self, job_id: str, attempt: int, shard: int, shards: int, partial: str
    ) -> bool:
        """Keep a shard's partial; True when it was the last one missing: merge now, under
        the job's own lease, which the caller then holds."""
        outcome = self._call(
            self._scripts["store_partial"],
            keys=[record_key(job_id), part_key(job_id, Part.PARTIALS), LEASES_KEY],
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
        raw = self._call(self._client.hgetall, part_key(job_id, Part.PARTIALS))
        return {int(shard): value.decode() for shard, value in raw.items()}

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._scripts["progress"],
            keys=[record_key(job_id), part_key(job_id, Part.PREVIEW)],
            args=[attempt, progress.model_dump_json(), preview or b""],
        )

    def attach(self, job_id: str, attempt: int, data: bytes, ttl_seconds: int) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._scripts["attach"],
            keys=[record_key(job_id), part_key(job_id, Part.ARRAYS)],
            args=[attempt, data, ttl_seconds],
        )

    def shard_progress(self, job_id: str, attempt: int, shard: int, done: int, total: int) -> None:
        self._best_effort(
            job_id,
            attempt,
            self._scripts["shard_progress"],
            keys=[record_key(job_id), part_key(job_id, Part.SHARDS)],
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
            self._stops.stop(job_id, attempt)  # cancelled, superseded or deleted

    def start_shard(
        self, job_id: str, attempt: int, shard: int, max_deliveries: int, holder: str = ""
    ) -> ShardStart:
        outcome = self._call(
            self._scripts["start_shard"],
            keys=[
                record_key(job_id),
                part_key(job_id, Part.SHARDS),
                part_key(job_id, Part.PARTIALS),
                LEASES_KEY,
            ],
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
        def read() -> bool:
            try:
                status, attempts, cancel = self._client.hmget(
                    record_key(job_id), ["status", "attempts", "cancel"]
                )
            except redis.RedisError as exc:
                log.warning("job %s: cancel flag unreadable, going on: %s", job_id, exc)
                return False
            return status != b"running" or attempts != str(attempt).encode() or cancel == b"1"

        return self._stops(job_id, attempt, read)

    def finish(self, job_id: str, attempt: int, ending: Ending, ttl_seconds: int) -> bool:
        args = [
            attempt,
            ending.status.value,
            time.time(),
            ending.error.model_dump_json() if ending.error else "",
            ending.result or "",
            ttl_seconds,
            self._results_max_bytes or 0,
        ]
        deadline = time.monotonic() + self._finish_retry_s
        delay = 0.2
        while True:
            try:
                return bool(
                    self._scripts["finish"](keys=[*job_keys(job_id), LEASES_KEY], args=args)
                )
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
        failed = Ending(JobStatus.FAILED, error=error)
        return self.finish(job_id, int(attempts), failed, ttl_seconds)
