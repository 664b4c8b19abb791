"""A renamed job kind (``exemplars`` -> ``exemplar``): what the old name left behind still reads.

The service is started on a backend that a release before the rename wrote to: a record and a
running-time histogram stored under the old name. Through HTTP, the record reads as today's
kind, a listing by either name finds it, and ``/metrics`` shows one series for the kind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnviz_client import Client
from schemas.exemplars import ExemplarsCreate
from schemas.jobs import JobRecord, JobStatus, JobTask, fingerprint
from schemas.routes import RENAMED_KINDS, first_kind_name, kind_name
from service.main import create_app
from tests.jobs.conftest import api_settings
from tests.jobs.datasets import SMALL
from tests.jobs.procs import RedisServer, serve
from tests.jobs.test_job_metrics import samples, value
from workers.kinds import get_kind, kind_names
from workers.records.base import JobRecords
from workers.records.redis import RedisRecords
from workers.records.redis_fields import from_fields, to_fields
from workers.records.sqlite import SqliteRecords

TTL = 600
REQUEST = ExemplarsCreate(dataset=SMALL, layers=["fc"], k=2)


def test_kind_names_are_singular_and_old_names_are_not_kinds() -> None:
    assert kind_names() == ["attribution", "dissection", "exemplar", "optimization", "sanity_check"]
    assert kind_name("exemplars") == "exemplar" and kind_name("optimization") == "optimization"
    assert set(RENAMED_KINDS).isdisjoint(kind_names())
    assert get_kind("exemplars") is get_kind("exemplar")
    with pytest.raises(LookupError, match="unknown job kind 'exemplarz'"):
        get_kind("exemplarz")


def test_a_fingerprint_is_the_one_the_kind_had_before_its_rename() -> None:
    """Idempotency keys and result reuse compare fingerprints as strings: written out here as
    the release before the rename made them, for its name ``exemplars``."""
    before = json.dumps(
        {"kind": "exemplars", "model": "shapes", **REQUEST.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert fingerprint("exemplar", "shapes", REQUEST) == before
    assert fingerprint("exemplars", "shapes", REQUEST) == before
    assert first_kind_name("exemplar") == "exemplars"
    assert first_kind_name("optimization") == "optimization"
    assert '"kind":"optimization"' in fingerprint("optimization", "shapes", REQUEST)


def test_a_queued_task_message_of_the_old_name_runs_todays_kind() -> None:
    message = {"job_id": "j", "kind": "exemplars", "model": "shapes", "request": {}}
    task = JobTask.model_validate({**message, "ttl_seconds": 60})
    assert task.kind == "exemplar" and get_kind(task.kind).name == "exemplar"


def test_what_is_stored_or_queued_keeps_the_first_name_that_older_releases_read() -> None:
    """During a rolling upgrade, workers and API replicas of the release before the rename
    read the records and task messages of this one: they carry the first name."""
    record = _old_record("j").model_copy(update={"kind": "exemplar"})
    assert to_fields(record)["kind"] == "exemplars"  # the Redis hash
    assert json.loads(record.model_dump_json())["kind"] == "exemplars"  # SQLite's record
    assert record.task(60).model_dump(mode="json")["kind"] == "exemplars"  # Celery's message
    # Read back, and shown: today's name.
    assert from_fields(to_fields(record)).kind == "exemplar"
    assert json.loads(record.read().model_dump_json())["kind"] == "exemplar"


def _old_record(job_id: str) -> JobRecord:
    """A record as the release before the rename stored it (``model_copy`` does not validate,
    so the old name is what the backend writes)."""
    record = JobRecord(
        id=job_id,
        kind="exemplar",
        model="shapes",
        status=JobStatus.QUEUED,
        request=REQUEST.model_dump(mode="json"),
        created_at=time.time(),
    )
    return record.model_copy(update={"kind": "exemplars"})


@pytest.fixture(params=["sqlite", "redis"])
def written_before(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[JobRecords, dict[str, object]]]:
    """A backend holding what a release before the rename wrote, and the API settings that
    read it (the in-process default's data directory, or Redis)."""
    if request.param == "sqlite":
        data_dir = tmp_path / "data"
        backend: JobRecords = SqliteRecords(data_dir, TTL, stop_check_interval_s=0)
        yield backend, {"redis_url": None, "data_dir": str(data_dir)}
        return
    server: RedisServer = request.getfixturevalue("fresh_redis")
    records = RedisRecords(server.client(), max_attempts=3, ttl_seconds=TTL)
    yield records, {"redis_url": server.url}


def test_what_the_old_name_left_reads_as_todays_kind_through_the_api(
    written_before: tuple[JobRecords, dict[str, object]], models_file: Path
) -> None:
    backend, where = written_before
    job_id = f"old-{time.monotonic_ns()}"
    backend.create(_old_record(job_id), TTL)
    backend.cancel(job_id)  # queued: cancelled at once (an in-process API runs queued jobs)
    backend.observe_duration("exemplars", JobStatus.SUCCEEDED, 3.0)
    backend.observe_duration("exemplar", JobStatus.SUCCEEDED, 0.5)

    redis_url = where.pop("redis_url")
    settings = api_settings(redis_url, exemplar_shard_images=100, **where)  # type: ignore[arg-type]
    settings.models_file = models_file
    with serve(create_app(settings)) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert (job["kind"], job["status"]) == ("exemplar", "cancelled")
        for name in ("exemplars", "exemplar"):
            listed = api.get("/v1/jobs", params={"kind": name}).json()["jobs"]
            assert [j["id"] for j in listed] == [job_id] and listed[0]["kind"] == "exemplar"
        assert api.get("/v1/jobs", params={"kind": "optimization"}).json()["jobs"] == []

        found = samples(api)
        old = [labels for (_, labels) in found if ("kind", "exemplars") in labels]
        assert old == []
        assert value(found, "cnnviz_jobs", kind="exemplar", status="cancelled") == 1
        succeeded = {"kind": "exemplar", "status": "succeeded"}
        assert value(found, "cnnviz_job_duration_seconds_count", **succeeded) == 2
        assert value(found, "cnnviz_job_duration_seconds_sum", **succeeded) == 3.5
        assert value(found, "cnnviz_job_duration_seconds_bucket", le="1", **succeeded) == 1


def test_a_client_that_submits_by_the_old_name_gets_todays_kind(models_file: Path) -> None:
    settings = api_settings(None, exemplar_shard_images=100)
    settings.models_file = models_file
    with serve(create_app(settings)) as api, Client(http=api) as client:
        queued = client.submit("exemplars", "shapes", REQUEST, idempotency_key="k-1")
        assert queued.kind == "exemplar"
        done = client.wait(queued.id)
        assert done.status == JobStatus.SUCCEEDED and done.kind == "exemplar"
        # The same key and body under today's name: the same job (fingerprints agree).
        again = client.submit("exemplar", "shapes", REQUEST, idempotency_key="k-1")
        assert again.id == queued.id
        assert [j.id for j in client.jobs(kind="exemplars").jobs] == [queued.id]
