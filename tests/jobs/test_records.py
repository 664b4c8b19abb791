"""A job record moves once: fenced attempts, one final state, one result.

The same specification for the records in Redis, in SQLite and in memory: one backend object
each, which the API and the runner share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.jobs import JobError, JobRecord, JobStatus, Progress
from schemas.optimization import ObjectiveKind, OptimizationCreate, OptimizationResult
from tests.jobs.procs import RedisServer
from workers.records import (
    Conditions,
    Ending,
    Idempotency,
    IdempotencyConflict,
    JobFilter,
    JobNotFinished,
    JobNotFound,
)
from workers.records.base import JobRecords
from workers.records.memory import MemoryRecords
from workers.records.redis import RedisRecords
from workers.records.sqlite import SqliteRecords
from workers.records.verdicts import Verdict, sanity_status

TTL = 600


class Records:
    """One backend's records, seen from the API (``api``) and from the runner (``recorder``):
    the same object, as both transports use it."""

    def __init__(self, backend: Any) -> None:
        self.recorder = backend
        self._backend = backend

    def api(self, method: str, *args: Any) -> Any:
        return getattr(self._backend, method)(*args)


@pytest.fixture(params=["redis", "sqlite", "memory"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Records]:
    if request.param == "memory":
        yield Records(MemoryRecords(TTL))
        return
    if request.param == "sqlite":
        backend = SqliteRecords(tmp_path / "data", TTL, max_attempts=3, stop_check_interval_s=0)
        yield Records(backend)
        backend.close()
        return
    server: RedisServer = request.getfixturevalue("shared_redis")
    backend = RedisRecords(
        server.client(), max_attempts=3, ttl_seconds=TTL, stop_check_interval_s=0
    )
    yield Records(backend)


def new_record(job_id: str | None = None) -> JobRecord:
    return JobRecord(
        id=job_id or f"job-{time.monotonic_ns()}",
        kind="optimization",
        model="shapes",
        status=JobStatus.QUEUED,
        request=OptimizationCreate(layer="block1.relu", channels=[0]).model_dump(mode="json"),
        created_at=time.time(),
    )


def result() -> OptimizationResult:
    return OptimizationResult(
        model="shapes",
        layer="block1.relu",
        objective=ObjectiveKind.CHANNEL,
        units=[],
        grid="",
        grid_columns=1,
        image_size=8,
        seed=0,
        settings={},
        device="cpu",
        elapsed_s=0.0,
    )


def result_json() -> str:
    return result().model_dump_json()


def finished(records: JobRecords, arrays: bytes, idem: Idempotency | None = None) -> str:
    """A new job run to success with ``arrays`` attached; its id."""
    record, _ = records.create(new_record(), TTL, Conditions(idem))
    attempt = records.start(record.id)
    assert attempt is not None
    records.attach(record.id, attempt, arrays, TTL)
    assert records.finish(record.id, attempt, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    return record.id


def progress(step: int) -> Progress:
    return Progress(step=step, total=10, objectives=[float(step)])


def test_a_job_runs_once_to_one_result(records: Records) -> None:
    record, created = records.api("create", new_record(), TTL)
    assert created
    attempt = records.recorder.start(record.id)
    assert attempt == 1
    records.recorder.progress(record.id, attempt, progress(3), b"png")
    assert records.api("get", record.id).progress.step == 3
    assert records.api("preview", record.id) == b"png"

    assert records.recorder.finish(
        record.id, attempt, Ending(JobStatus.SUCCEEDED, result_json()), TTL
    )
    # A second final write, from the same attempt or a late one, changes nothing.
    assert not records.recorder.finish(
        record.id, attempt, Ending(JobStatus.FAILED, error=JobError(code="x", message="x")), TTL
    )
    done = records.api("get", record.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.error is None
    assert OptimizationResult.model_validate_json(records.api("result", record.id)) == result()
    # A redelivered message finds the job finished and does not run it again.
    assert records.recorder.start(record.id) is None
    assert records.api("get", record.id).attempts == 1


def test_a_redelivered_job_fences_off_its_lost_first_attempt(records: Records) -> None:
    record, _ = records.api("create", new_record(), TTL)
    first = records.recorder.start(record.id)
    second = records.recorder.start(record.id)  # the message came back: worker lost
    assert (first, second) == (1, 2)

    records.recorder.progress(record.id, first, progress(9), None)
    assert records.api("get", record.id).progress is None  # attempt 2 restarted from 0
    assert records.recorder.should_stop(record.id, first)
    assert not records.recorder.should_stop(record.id, second)
    assert not records.recorder.finish(
        record.id, first, Ending(JobStatus.SUCCEEDED, result_json()), TTL
    )
    assert records.api("result", record.id) is None

    assert records.recorder.finish(
        record.id, second, Ending(JobStatus.SUCCEEDED, result_json()), TTL
    )
    done = records.api("get", record.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2)


def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(records: Records) -> None:
    queued, _ = records.api("create", new_record(), TTL)
    assert records.api("cancel", queued.id).status == JobStatus.CANCELLED
    assert records.recorder.start(queued.id) is None

    running, _ = records.api("create", new_record(), TTL)
    attempt = records.recorder.start(running.id)
    assert not records.recorder.should_stop(running.id, attempt)
    assert records.api("cancel", running.id).cancel
    assert records.recorder.should_stop(running.id, attempt)
    assert records.recorder.finish(running.id, attempt, Ending(JobStatus.CANCELLED), TTL)
    assert records.api("get", running.id).status == JobStatus.CANCELLED


def test_delete_needs_a_finished_job(records: Records) -> None:
    record, _ = records.api("create", new_record(), TTL)
    with pytest.raises(JobNotFinished):
        records.api("delete", record.id)
    records.api("cancel", record.id)
    records.api("delete", record.id)
    with pytest.raises(JobNotFound):
        records.api("get", record.id)
    with pytest.raises(JobNotFound):
        records.api("delete", record.id)


def test_an_idempotency_key_maps_to_one_job(records: Records) -> None:
    key = Idempotency(f"digest-{time.monotonic_ns()}", "body-1")
    first, created = records.api("create", new_record(), TTL, Conditions(key))
    again, created_again = records.api("create", new_record(), TTL, Conditions(key))
    assert created and not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        records.api("create", new_record(), TTL, Conditions(Idempotency(key.digest, "body-2")))
    # Once the job is forgotten, the key is free again.
    records.api("cancel", first.id)
    records.api("delete", first.id)
    third, created_third = records.api("create", new_record(), TTL, Conditions(key))
    assert created_third and third.id != first.id


@pytest.mark.parametrize("records", ["redis", "sqlite"], indirect=True)
def test_a_job_whose_workers_keep_dying_fails_after_the_last_attempt(records: Records) -> None:
    # Each start after the first is a delivery whose worker (Redis) or process (SQLite) was
    # lost; both backends allow three attempts. Memory has no such limit: its jobs die
    # with the one process.
    record, _ = records.api("create", new_record(), TTL)
    assert [records.recorder.start(record.id) for _ in range(4)] == [1, 2, 3, None]
    failed = records.api("get", record.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.code == "worker_lost"


def test_an_owners_jobs_are_listed_newest_first_in_pages_with_filters(records: Records) -> None:
    base = time.time()
    made = []
    for i in range(7):
        record = new_record(f"list-{i}").model_copy(
            update={
                "owner": "alice",
                "created_at": base + (i // 2),  # pairs share a time: ties go by id
                "kind": "exemplar" if i % 3 == 0 else "optimization",
            }
        )
        made.append(records.api("create", record, TTL)[0])
    records.api("create", new_record("list-bob").model_copy(update={"owner": "bob"}), TTL)
    records.api("cancel", made[6].id)  # queued: cancelled at once, still listed
    expected = sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)
    pages, cursor = [], None
    while True:
        page = records.api("owned", "alice", JobFilter(), cursor, 3)
        pages.append([r.id for r in page])
        if len(page) < 3:
            break
        cursor = (page[-1].created_at, page[-1].id)
    assert [i for p in pages for i in p] == [r.id for r in expected]
    assert [len(p) for p in pages] == [3, 3, 1]
    kinds = records.api("owned", "alice", JobFilter(kind="exemplar"), None, 10)
    assert [r.id for r in kinds] == [r.id for r in expected if r.kind == "exemplar"]
    cancelled = records.api("owned", "alice", JobFilter(status=JobStatus.CANCELLED), None, 10)
    assert [r.id for r in cancelled] == [made[6].id]
    assert records.api("owned", "alice", JobFilter(model="other"), None, 10) == []
    assert [r.id for r in records.api("owned", "bob", JobFilter(), None, 10)] == ["list-bob"]
    # A deleted job leaves the list.
    records.api("delete", made[6].id)
    assert made[6].id not in [r.id for r in records.api("owned", "alice", JobFilter(), None, 10)]


def test_sanity_verdicts_are_kept_by_model_weights_method_and_layer(records: Records) -> None:
    model, weights = f"net-{time.monotonic_ns()}", "a" * 64
    assert records.api("verdicts", model, weights) == {}
    records.api(
        "keep_verdicts",
        model,
        weights,
        [Verdict("gradcam", "block4.relu", True), Verdict("saliency", "", False)],
    )
    # The latest check of a key wins; other layers, weights and models are apart.
    records.api(
        "keep_verdicts",
        model,
        weights,
        [Verdict("saliency", "", True), Verdict("gradcam", "block3.relu", False)],
    )
    table = records.api("verdicts", model, weights)
    assert table == {
        ("gradcam", "block4.relu"): True,
        ("gradcam", "block3.relu"): False,
        ("saliency", ""): True,
    }
    assert records.api("verdicts", model, "b" * 64) == {}
    assert records.api("verdicts", f"{model}-other", weights) == {}
    # They outlive every job: a finished job deleted leaves them.
    job = records.api("create", new_record(), TTL)[0]
    attempt = records.recorder.start(job.id)
    records.recorder.finish(job.id, attempt, Ending(JobStatus.SUCCEEDED, "{}"), TTL)
    records.api("delete", job.id)
    assert records.api("verdicts", model, weights) == table
    assert sanity_status(table, "gradcam", "block4.relu") == "passed"
    assert sanity_status(table, "gradcam", None) == "failed"  # one layer failed
    assert sanity_status(table, "saliency", "") == "passed"
    assert sanity_status(table, "occlusion", None) == "unknown"


def test_kept_bytes_are_read_back_by_their_digest_until_they_expire(records: Records) -> None:
    data = bytes(range(256)) * 4  # binary, with NULs: stored as bytes, not text
    records.api("put_blob", "a" * 64, data, TTL)
    records.api("put_blob", "b" * 64, b"short-lived", 1)
    assert records.recorder.blob("a" * 64) == data
    assert records.recorder.blob("c" * 64) is None
    time.sleep(1.1)
    assert records.recorder.blob("b" * 64) is None
    assert records.recorder.blob("a" * 64) == data
