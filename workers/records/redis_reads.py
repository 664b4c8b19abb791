"""Reads of the Redis records that span many jobs: an owner's jobs for listing, and the
counts and durations that ``GET /metrics`` shows. Functions of a client; the records call
them through their error mapping."""

from __future__ import annotations

from typing import cast

import redis

from schemas.jobs import JobRecord
from workers.records.base import Cursor, JobFilter, newest_first
from workers.records.redis_fields import from_fields
from workers.records.redis_keys import KEY_PREFIX, owner_jobs_key, record_key
from workers.records.stats import Durations, bucket_labels

__all__ = ["count_jobs", "owned_jobs", "read_durations"]

_LIST_BATCH = 200  # an owner's jobs read per round trip when listing


def owned_jobs(
    client: redis.Redis, owner: str, chosen: JobFilter, before: Cursor | None, limit: int
) -> list[JobRecord]:
    """``owner``'s jobs that ``chosen`` keeps, newest first, after ``before`` (see
    :meth:`~workers.records.base.JobRecords.owned`); deleted and expired ones are pruned from
    the owner's set on the way."""
    key = owner_jobs_key(owner)
    top = "+inf" if before is None else repr(before[0])
    found: list[JobRecord] = []
    offset = 0
    # Newest first, a batch at a time, until the page is full: a filter may skip many.
    while len(found) < limit:
        batch = client.zrevrangebyscore(key, top, "-inf", start=offset, num=_LIST_BATCH)
        ids = cast("list[bytes]", batch)
        if not ids:
            break
        offset += len(ids)
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(record_key(job_id.decode()))
        rows = pipe.execute()
        gone = [job_id for job_id, fields in zip(ids, rows, strict=True) if not fields]
        if gone:
            client.zrem(key, *gone)
            offset -= len(gone)
        records = [from_fields(fields) for fields in rows if fields]
        found += newest_first(records, chosen, before, limit - len(found))
    return found


def count_jobs(client: redis.Redis) -> dict[tuple[str, str], int]:
    """How many records there are of each ``(kind, status)``: a scan of the records (each
    job's own key: the prefix and an id, no suffix), then their kind and status in one round
    trip; fine at a scrape every few seconds."""
    keys = [
        key
        for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000)
        if b":" not in key[len(KEY_PREFIX) :]
    ]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "kind", "status")
    counts: dict[tuple[str, str], int] = {}
    for kind, status in pipe.execute():
        if kind is None or status is None:  # expired between the scan and the read
            continue
        label = (kind.decode(), status.decode())
        counts[label] = counts.get(label, 0) + 1
    return counts


def read_durations(raw: dict[bytes, bytes]) -> dict[tuple[str, str], Durations]:
    """The duration histograms from the stats hash (``kind|status|bucket`` fields)."""
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
