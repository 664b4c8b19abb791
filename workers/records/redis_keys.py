"""The Redis keys of job records: one record hash per job, and the keys beside it.

Every key of a job starts with :data:`KEY_PREFIX` and its id; the Lua scripts
(:mod:`workers.records.redis_scripts`) receive them as ``KEYS`` and never build them, except
a record's key from an id they read (``KEY_PREFIX .. id``).
"""

from __future__ import annotations

from enum import StrEnum

KEY_PREFIX = "cnnviz:job:"
# The job duration histograms of every worker (a hash; no TTL: a few fields per kind).
STATS_KEY = "cnnviz:stats:job_duration"


def record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}"


class Part(StrEnum):
    """The keys beside a job's record hash, ``<record key>:<part>`` (:func:`part_key`), in
    the order :func:`job_keys` lists them."""

    RESULT = "result"  # the result JSON, written once
    PREVIEW = "preview"  # the latest preview PNG
    # Per shard of the current attempt: ``done:<i>`` work done, ``n:<i>`` deliveries.
    SHARDS = "shards"
    ARRAYS = "arrays"  # the raw float tensors a job attached (safetensors bytes)
    # The latest checkpoint of a running job (bytes its kind wrote), for the next attempt.
    CHECKPOINT = "checkpoint"
    # Per shard of a job of several shards: its partial (JSON), kept across attempts.
    PARTIALS = "partials"


def part_key(job_id: str, part: Part) -> str:
    return f"{record_key(job_id)}:{part}"


def idempotency_key(digest: str) -> str:
    return f"cnnviz:idem:{digest}"


def reuse_key(digest: str) -> str:
    """The latest job of a request (its fingerprint's digest), for serving repeats from it."""
    return f"cnnviz:reuse:{digest}"


def blob_key(digest: str) -> str:
    """Bytes a request names by their sha256 (a caricature's image), kept for the job TTL."""
    return f"cnnviz:blob:{digest}"


LEASES_KEY = "cnnviz:leases"
"""The leases of running jobs and shards: a sorted set of ``<id>`` (a job's own lease) and
``<id>#<shard>`` (a shard's), scored by when they lapse (Redis time, in milliseconds)."""


def lease_member(job_id: str, shard: int | None = None) -> str:
    return job_id if shard is None else f"{job_id}#{shard}"


def owner_jobs_key(owner: str) -> str:
    """An owner's jobs by creation time (a sorted set; deleted and expired ones pruned when
    read)."""
    return f"cnnviz:owner:{owner}:jobs"


def owner_key(owner: str) -> str:
    """The ids of an owner's jobs that may be unfinished (finished ones are pruned lazily)."""
    return f"cnnviz:owner:{owner}:active"


def job_keys(job_id: str) -> list[str]:
    """Every key of one job, the record first."""
    return [record_key(job_id), *(part_key(job_id, part) for part in Part)]


CALLBACKS_KEY = "cnnviz:callbacks"
"""The callbacks outbox: a sorted set of job ids scored by when their callback is due (Redis
time, in milliseconds); each job's tries and claim token are fields of its record."""
