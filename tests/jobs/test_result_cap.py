"""The in-memory records keep at most a byte cap of finished jobs' parts: past it the oldest
go to files (and read the same) or are dropped (and read as expired); unfinished jobs stay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import service.jobs.inprocess as inprocess
from cnnviz.allocator import release_freed_memory
from schemas.jobs import JobStatus, Progress
from service.main import create_app
from tests.jobs.client import MODEL, QUICK, submit, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve, wait_for
from tests.jobs.test_records import TTL, new_record
from workers.records import Conditions, Ending, Idempotency, JobNotFound, ResultExpired
from workers.records.memory import MemoryRecords
from workers.records.spill import ResultFiles

PART = 10_000  # bytes of each part of a fake result


def finish(records: MemoryRecords, tag: str, idem: Idempotency | None = None) -> str:
    """Run a fake job to success with a result, a preview and raw tensors of PART bytes each."""
    record, _ = records.create(new_record(), TTL, Conditions(idem))
    attempt = records.start(record.id)
    assert attempt is not None
    records.progress(record.id, attempt, Progress(step=1, total=1), tag.encode() * PART)
    records.attach(record.id, attempt, tag.encode().upper() * PART, TTL)
    assert records.finish(record.id, attempt, Ending(JobStatus.SUCCEEDED, tag * PART), TTL)
    return record.id


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def test_spilled_results_read_back_whole_and_memory_stays_under_the_cap(tmp_path: Path) -> None:
    cap = 5 * 3 * PART  # about five jobs' parts
    records = MemoryRecords(TTL, max_result_bytes=cap, results_dir=tmp_path)
    jobs = {}
    for i in range(20):
        tag = chr(ord("a") + i)
        jobs[tag] = finish(records, tag)
        assert records.kept_bytes <= cap
    assert records.kept_bytes > cap // 2  # the newest are kept, not everything spilled
    for tag, job_id in jobs.items():
        assert records.result(job_id) == tag * PART
        assert records.preview(job_id) == tag.encode() * PART
        assert records.arrays(job_id) == tag.encode().upper() * PART
    spilled = files_in(tmp_path)
    assert spilled and len(spilled) % 3 == 0
    # Deleting a spilled job removes its files; its record is gone.
    records.delete(jobs["a"])
    assert len(files_in(tmp_path)) == len(spilled) - 3
    with pytest.raises(JobNotFound):
        records.result(jobs["a"])
    records.close()
    assert tmp_path.is_dir()  # a directory that was given is never removed


def test_the_oldest_are_dropped_first_with_evict_and_read_as_expired() -> None:
    cap = 3 * 3 * PART
    records = MemoryRecords(TTL, max_result_bytes=cap, overflow="evict")
    key = Idempotency("digest-old", "body")
    old = finish(records, "a", key)
    newer = [finish(records, chr(ord("b") + i)) for i in range(5)]
    assert records.kept_bytes <= cap
    for part in ("result", "preview", "arrays"):
        with pytest.raises(ResultExpired):
            getattr(records, part)(old)
    assert records.get(old).status == JobStatus.SUCCEEDED  # the record itself stays
    assert records.result(newer[-1]) == "f" * PART
    # The key of a dropped job leads to a new job, which a late delete of the old one
    # leaves alone.
    again, created = records.create(new_record(), TTL, Conditions(key))
    assert created and again.id != old
    records.delete(old)
    replay, created = records.create(new_record(), TTL, Conditions(key))
    assert not created and replay.id == again.id


def test_unfinished_jobs_are_never_moved_out(tmp_path: Path) -> None:
    records = MemoryRecords(TTL, max_result_bytes=0, results_dir=tmp_path)
    running, _ = records.create(new_record(), TTL)
    attempt = records.start(running.id)
    assert attempt is not None
    records.progress(running.id, attempt, Progress(step=1, total=2), b"p" * PART)
    records.attach(running.id, attempt, b"r" * PART, TTL)
    finish(records, "x")  # over the cap at once: it goes to files, the running job stays
    assert files_in(tmp_path)
    assert records.preview(running.id) == b"p" * PART
    assert records.kept_bytes == 0  # only finished jobs count
    assert records.finish(running.id, attempt, Ending(JobStatus.SUCCEEDED, "done"), TTL)
    assert records.result(running.id) == "done"
    assert records.arrays(running.id) == b"r" * PART


def test_a_result_that_cannot_be_written_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: ResultFiles, job_id: str, parts: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultFiles, "write", disk_full)
    records = MemoryRecords(TTL, max_result_bytes=PART, results_dir=tmp_path)
    job_id = finish(records, "a")
    assert records.kept_bytes == 0
    with pytest.raises(ResultExpired):
        records.result(job_id)
    assert not files_in(tmp_path)


def test_spilled_files_stay_under_the_disk_cap_dropping_the_oldest(tmp_path: Path) -> None:
    one_job = 3 * PART  # a job's three parts
    records = MemoryRecords(
        TTL, max_result_bytes=0, results_dir=tmp_path, max_disk_bytes=4 * one_job
    )
    key = Idempotency("digest-first", "body")
    jobs = [finish(records, "a", key)] + [finish(records, chr(ord("b") + i)) for i in range(9)]
    on_disk = sum(path.stat().st_size for path in files_in(tmp_path))
    assert on_disk == records.disk_bytes == 4 * one_job  # the newest four fill the cap
    for old in jobs[:6]:  # the oldest are gone: expired, not empty, records still there
        with pytest.raises(ResultExpired):
            records.result(old)
        assert records.get(old).status == JobStatus.SUCCEEDED
    for tag, job_id in zip("ghij", jobs[6:], strict=True):
        assert records.result(job_id) == tag * PART
        assert records.arrays(job_id) == tag.encode().upper() * PART
    # The key of a job whose files went for room leads to a new job.
    fresh, created = records.create(new_record(), TTL, Conditions(key))
    assert created and fresh.id != jobs[0]
    # Deleting a spilled job gives its room back.
    records.delete(jobs[-1])
    assert records.disk_bytes == 3 * one_job
    assert sum(path.stat().st_size for path in files_in(tmp_path)) == 3 * one_job


def test_a_result_larger_than_the_disk_cap_is_dropped_not_spilled(tmp_path: Path) -> None:
    records = MemoryRecords(TTL, max_result_bytes=0, results_dir=tmp_path, max_disk_bytes=PART)
    kept = finish(records, "a")  # three parts of PART bytes: over the cap alone
    with pytest.raises(ResultExpired):
        records.result(kept)
    assert not files_in(tmp_path) and records.disk_bytes == 0


def test_a_failed_write_gives_its_reserved_room_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = MemoryRecords(TTL, max_result_bytes=0, results_dir=tmp_path, max_disk_bytes=10 * PART)
    first = finish(records, "a")
    write = ResultFiles.write

    def disk_full(self: ResultFiles, job_id: str, parts: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultFiles, "write", disk_full)
    finish(records, "b")
    assert records.disk_bytes == 3 * PART  # only the first job's files
    monkeypatch.setattr(ResultFiles, "write", write)
    third = finish(records, "c")
    assert records.result(first) == "a" * PART and records.result(third) == "c" * PART
    assert records.disk_bytes == 6 * PART


def test_a_temporary_results_directory_goes_with_the_store() -> None:
    records = MemoryRecords(TTL, max_result_bytes=0)
    finish(records, "a")
    directory = records.results_dir
    assert directory is not None and files_in(directory)
    records.close()
    assert not directory.exists()


# ---- over HTTP, with the in-process transport ----


@pytest.fixture(params=["spill", "evict"])
def capped_api(
    request: pytest.FixtureRequest, tmp_path: Path, models_file: Path
) -> Iterator[tuple[httpx.Client, MemoryRecords]]:
    """The API with a cap of one byte: every finished job's parts leave memory at once."""
    settings = api_settings(
        None,
        inprocess_results_max_bytes=1,
        inprocess_results_overflow=request.param,
        inprocess_results_dir=tmp_path / "results",
    )
    settings.models_file = models_file
    app = create_app(settings)
    with serve(app) as client:
        yield client, app.state.jobs.records


def test_a_spilled_or_evicted_job_over_http(
    capped_api: tuple[httpx.Client, MemoryRecords],
) -> None:
    api, records = capped_api
    job_id = submit(api, QUICK)["id"]
    wait_for(lambda: records.get(job_id).status.finished, 60, "the job to finish")
    assert records.get(job_id).status == JobStatus.SUCCEEDED
    assert records.kept_bytes <= 1
    results_dir = records.results_dir
    if results_dir is not None:  # spill: everything reads as if it were in memory
        assert files_in(results_dir)
        job = api.get(f"/v1/jobs/{job_id}", params={"inline": "true"}).json()
        assert job["status"] == "succeeded" and len(job["result"]["units"]) == 2
        assert job["result"]["units"][0]["image"]
        for path in ("result.png", "units/1.png", "result.npy", "preview"):
            response = api.get(f"/v1/jobs/{job_id}/{path}")
            assert response.status_code == 200, (path, response.text)
        reused = api.post(f"/v1/models/{MODEL}/optimizations", json=QUICK)
        assert reused.status_code == 200 and reused.json()["id"] == job_id
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert not files_in(results_dir)
        return
    # evict: the record remains, its result reads as expired
    for path in ("", "/result.png", "/units/0.png", "/result.npy", "/preview"):
        response = api.get(f"/v1/jobs/{job_id}{path}")
        assert response.status_code == 410, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "result_expired"
    # An identical request runs again rather than answering with the expired job.
    again = api.post(f"/v1/models/{MODEL}/optimizations", json=QUICK)
    assert again.status_code == 202 and again.json()["id"] != job_id
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert api.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_result_over_the_disk_cap_reads_as_expired_over_http(
    tmp_path: Path, models_file: Path
) -> None:
    settings = api_settings(
        None,
        inprocess_results_max_bytes=1,
        inprocess_results_dir=tmp_path / "results",
        inprocess_results_disk_max_bytes=1,
    )
    settings.models_file = models_file
    app = create_app(settings)
    with serve(app) as api:
        records = app.state.jobs.records
        job_id = submit(api, QUICK)["id"]
        wait_for(lambda: records.get(job_id).status.finished, 60, "the job to finish")
        response = api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 410 and response.json()["code"] == "result_expired"
        assert not files_in(tmp_path / "results")


def test_kept_bytes_stay_under_the_cap_over_many_jobs(tmp_path: Path, models_file: Path) -> None:
    cap = 100_000  # a few of these small jobs
    settings = api_settings(
        None, inprocess_results_max_bytes=cap, inprocess_results_dir=tmp_path / "results"
    )
    settings.models_file = models_file
    app = create_app(settings)
    records: MemoryRecords = app.state.jobs.records
    with serve(app) as api:
        ids = []
        for i in range(8):
            ids.append(submit(api, {**QUICK, "seed": 1000 + i})["id"])
            wait_job(api, ids[-1])
            # Right after a job reads as finished, the oldest may still be on their way to
            # files (and still count): the cap holds once they are there.
            wait_for(lambda: records.kept_bytes <= cap, 30, "the results to fit the cap")
            assert records.kept_bytes > 0
        assert files_in(tmp_path / "results")  # the oldest went to files
        for job_id in ids:
            job = api.get(f"/v1/jobs/{job_id}")
            assert job.status_code == 200 and job.json()["result"] is not None
        scraped = text_string_to_metric_families(api.get("/metrics").text)
        gauges = {f.name: f.samples[0].value for f in scraped if f.name.endswith("_bytes")}
        assert gauges["cnnviz_job_results_kept_bytes"] == records.kept_bytes
        on_disk = sum(path.stat().st_size for path in files_in(tmp_path / "results"))
        assert gauges["cnnviz_job_results_disk_bytes"] == records.disk_bytes == on_disk > 0


def test_each_in_process_job_gives_freed_memory_back(
    models_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[float] = []
    monkeypatch.setattr(inprocess, "release_freed_memory", lambda: released.append(1))
    settings = api_settings(None)
    settings.models_file = models_file
    with serve(create_app(settings)) as api:
        for seed in (1, 2):
            wait_job(api, submit(api, {**QUICK, "seed": 2000 + seed})["id"])
        wait_for(lambda: len(released) == 2, 30, "a release after each job")
    # The real one runs where the C library has it, and where not, does nothing.
    release_freed_memory()
