"""A byte cap on what finished jobs keep in Redis (CNNVIZ_REDIS_RESULTS_MAX_BYTES): past it
the oldest finished jobs' parts are deleted and read as 410 result_expired, their records
stay, their idempotency keys lead to a new job, and queued and running jobs are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.jobs import JobStatus
from service.main import create_app
from tests.jobs.client import QUICK, submit
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for
from tests.jobs.test_records import TTL, finished, new_record, result_json
from workers.records import Conditions, Idempotency, ResultExpired
from workers.records.redis import RedisRecords
from workers.records.redis_cap import KEPT_TOTAL_KEY
from workers.records.redis_keys import Part, part_key

pytestmark = [pytest.mark.redis]

ARRAYS = b"\x02" * 10_000


def test_past_the_cap_the_oldest_results_expire_and_unfinished_jobs_stay(
    fresh_redis: RedisServer,
) -> None:
    client = fresh_redis.client()
    size = len(ARRAYS) + len(result_json())
    records = RedisRecords(client, ttl_seconds=TTL, results_max_bytes=2 * size)
    running, _ = records.create(new_record(), TTL)
    attempt = records.start(running.id)
    assert attempt is not None
    records.save_checkpoint(running.id, attempt, ARRAYS)

    key = Idempotency("digest-cap", "body")
    oldest = finished(records, ARRAYS, key)
    middle = finished(records, ARRAYS)
    assert int(client.get(KEPT_TOTAL_KEY)) == 2 * size
    newest = finished(records, ARRAYS)
    assert int(client.get(KEPT_TOTAL_KEY)) == 2 * size
    for part in ("result", "arrays", "preview"):
        with pytest.raises(ResultExpired):
            getattr(records, part)(oldest)
    assert records.get(oldest).status == JobStatus.SUCCEEDED  # the record stays
    assert records.arrays(middle) == ARRAYS and records.result(newest) == result_json()
    assert client.get(part_key(running.id, Part.CHECKPOINT)) == ARRAYS  # running: never touched
    assert records.get(running.id).status == JobStatus.RUNNING
    again, created = records.create(new_record(), TTL, Conditions(key))  # the key is free again
    assert created and again.id != oldest
    # A deleted job leaves the count.
    records.delete(middle)
    assert int(client.get(KEPT_TOTAL_KEY)) == size


def test_without_a_cap_nothing_expires(fresh_redis: RedisServer) -> None:
    records = RedisRecords(fresh_redis.client(), ttl_seconds=TTL)
    ids = [finished(records, ARRAYS) for _ in range(3)]
    assert all(records.arrays(job_id) == ARRAYS for job_id in ids)


@pytest.mark.slow
def test_an_expired_result_reads_as_410_over_http(
    fresh_redis: RedisServer, tmp_path: Path, models_file: Path
) -> None:
    worker = CeleryWorker(
        fresh_redis.url, tmp_path, {"CNNVIZ_REDIS_RESULTS_MAX_BYTES": "1"}
    ).start()
    try:
        settings = api_settings(fresh_redis.url, redis_results_max_bytes=1)
        settings.models_file = models_file
        with serve(create_app(settings)) as api:
            job_id = submit(api, QUICK)["id"]
            # Running, it reads as usual; once it has succeeded, over the cap at once.
            wait_for(lambda: api.get(f"/v1/jobs/{job_id}").status_code == 410, 60, "the job to end")
            for path in ("", "/result.png", "/result.npy", "/preview"):
                response = api.get(f"/v1/jobs/{job_id}{path}")
                assert response.status_code == 410, (path, response.text)
                assert response.json()["code"] == "result_expired"
            # An identical request runs again.
            again = api.post("/v1/models/shapes/optimizations", json=QUICK)
            assert again.status_code == 202 and again.json()["id"] != job_id
    finally:
        worker.stop()
