"""What the SQLite records add to the shared specification (tests/jobs/test_records.py):
everything survives a reopen, large parts live in files beside the database, processes on
one data directory never both run a job, a stopping process gives its jobs back, the byte
cap drops the oldest results, and a failing disk fails a job cleanly."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from schemas.jobs import JobStatus, Progress
from service.jobs.wiring import inprocess_records
from service.settings import Settings
from tests.jobs.test_records import TTL, finished, new_record, result_json
from workers.config import default_data_dir
from workers.records import Conditions, Ending, Idempotency, ResultExpired
from workers.records.memory import MemoryRecords
from workers.records.sqlite import SqliteRecords
from workers.records.sqlite_db import INLINE_MAX, BlobFiles, Holder

BIG = b"\x01" * (INLINE_MAX + 1)  # goes to a file


def store(path: Path, **options: object) -> SqliteRecords:
    return SqliteRecords(path, TTL, stop_check_interval_s=0, **options)  # type: ignore[arg-type]


def files(path: Path) -> list[Path]:
    return [p for p in (path / "results").rglob("*") if p.is_file()]


def test_records_results_and_checkpoints_survive_a_reopen(tmp_path: Path) -> None:
    first = store(tmp_path)
    done, _ = first.create(new_record(), TTL)
    attempt = first.start(done.id)
    assert attempt == 1
    first.attach(done.id, attempt, BIG, TTL)
    assert first.finish(done.id, attempt, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    running, _ = first.create(new_record(), TTL)
    attempt = first.start(running.id)
    assert attempt == 1
    first.progress(running.id, attempt, Progress(step=30, total=100), b"png")
    first.save_checkpoint(running.id, attempt, BIG + b"state")
    assert files(tmp_path)  # the large parts are files beside the database
    before = first.get(done.id)
    first.close()  # no clean stop: as after a SIGKILL

    again = store(tmp_path, lease_s=0.2)
    assert again.get(done.id) == before
    assert again.result(done.id) == result_json()
    assert again.arrays(done.id) == BIG
    assert again.get(running.id).progress == Progress(step=30, total=100)
    assert again.preview(running.id) == b"png"
    assert again.checkpoint(running.id) == BIG + b"state"
    # The old holder (this very process, for the test) is not gone: its heartbeat lapses.
    assert again.claim() == []
    time.sleep(0.3)
    assert [r.id for r in again.claim()] == [running.id]
    assert again.claim() == []  # claimed once
    resumed = again.start(running.id)
    assert resumed == 2
    assert again.get(running.id).progress == Progress(step=30, total=100)  # not back at 0
    assert again.finish(running.id, resumed, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert again.checkpoint(running.id) is None  # dropped with the finish
    again.delete(done.id)
    again.delete(running.id)
    assert files(tmp_path) == []


def test_two_processes_never_both_run_a_job_and_the_lapsed_one_is_fenced(tmp_path: Path) -> None:
    a = store(tmp_path, lease_s=0.5)
    b = store(tmp_path, lease_s=0.5)
    record, _ = a.create(new_record(), TTL)
    assert b.start(record.id) is None  # a holds it and lives
    first = a.start(record.id)
    assert first == 1
    assert b.claim() == []
    time.sleep(0.6)  # a's heartbeat lapses (a stalled, or its machine went away)
    assert [r.id for r in b.claim()] == [record.id]
    second = b.start(record.id)
    assert second == 2
    assert a.start(record.id) is None  # b lives now: a does not take it back
    a.progress(record.id, first, Progress(step=99, total=100), None)
    assert b.get(record.id).progress is None
    assert a.should_stop(record.id, first)
    assert not a.finish(record.id, first, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert b.finish(record.id, second, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert a.get(record.id).attempts == 2


def test_a_dead_process_or_a_reused_pid_is_gone_at_once() -> None:
    me = Holder()
    assert not me.gone(me.name)
    host, pid, started, _ = me.name.split("/")
    assert me.gone(f"{host}/{pid}/{int(started) - 1}/old")  # our pid, another start: a restart
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    assert me.gone(f"{host}/{dead}/1/x")
    assert not me.gone(f"elsewhere/{dead}/1/x")  # another host: only its heartbeat tells


def test_a_stopping_process_gives_its_running_jobs_back_without_spending_attempts(
    tmp_path: Path,
) -> None:
    creator = store(tmp_path)
    record, _ = creator.create(new_record(), TTL)
    creator.leave()  # the process that took the submission stopped before running it
    creator.close()
    for attempt in range(1, 6):  # more clean stops than max_attempts (3)
        process = store(tmp_path)
        process.claim()
        assert process.start(record.id) == attempt
        process.suspend()
        assert process.should_stop(record.id, attempt)
        # The runner, stopped, writes the job off as cancelled: not while suspended.
        assert not process.finish(record.id, attempt, Ending(JobStatus.CANCELLED), TTL)
        assert process.get(record.id).status == JobStatus.RUNNING
        process.leave()
        process.close()
    last = store(tmp_path)
    assert [r.id for r in last.claim()] == [record.id]
    assert last.start(record.id) == 6


def test_a_cancel_asked_while_stopping_is_kept(tmp_path: Path) -> None:
    records = store(tmp_path)
    record, _ = records.create(new_record(), TTL)
    attempt = records.start(record.id)
    assert attempt is not None
    records.cancel(record.id)
    records.suspend()
    assert records.finish(record.id, attempt, Ending(JobStatus.CANCELLED), TTL)
    assert records.get(record.id).status == JobStatus.CANCELLED


def test_past_the_byte_cap_the_oldest_results_expire_and_unfinished_jobs_stay(
    tmp_path: Path,
) -> None:
    size = len(BIG) + len(result_json())
    records = store(tmp_path, max_result_bytes=2 * size)
    running, _ = records.create(new_record(), TTL)
    attempt = records.start(running.id)
    assert attempt is not None
    records.save_checkpoint(running.id, attempt, BIG)
    oldest = finished(records, BIG, Idempotency("key-1", "body"))
    middle = finished(records, BIG)
    assert records.kept_bytes == 2 * size
    newest = finished(records, BIG)
    assert records.kept_bytes == 2 * size
    for part in ("result", "arrays", "preview"):
        with pytest.raises(ResultExpired):
            getattr(records, part)(oldest)
    assert records.get(oldest).status == JobStatus.SUCCEEDED  # the record stays
    assert records.arrays(middle) == BIG and records.arrays(newest) == BIG
    assert records.checkpoint(running.id) == BIG  # unfinished: never touched
    # The expired job's idempotency key leads to a new job.
    again, created = records.create(new_record(), TTL, Conditions(Idempotency("key-1", "body")))
    assert created and again.id != oldest
    # The files of the expired job are gone: the cap bounds the disk.
    assert sum(p.stat().st_size for p in files(tmp_path)) == 3 * len(BIG)


def test_a_failing_disk_fails_the_job_with_its_reason_and_reads_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = store(tmp_path)
    record, _ = records.create(new_record(), TTL)
    attempt = records.start(record.id)
    assert attempt is not None

    def read_only(*args: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(BlobFiles, "write", read_only)
    records.save_checkpoint(record.id, attempt, BIG)  # best effort: the job goes on
    assert not records.should_stop(record.id, attempt)
    big_result = '{"x": "' + "a" * INLINE_MAX + '"}'
    assert records.finish(record.id, attempt, Ending(JobStatus.SUCCEEDED, big_result), TTL)
    failed = records.get(record.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.code == "storage_error"
    assert "Read-only file system" in failed.error.message


def test_orphan_files_of_a_crash_are_removed_at_the_next_start(tmp_path: Path) -> None:
    store(tmp_path).close()
    orphan = tmp_path / "results" / "ab" / "result-0"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    fresh = tmp_path / "results" / "ab" / "result-1"  # perhaps about to be committed
    fresh.write_bytes(b"y")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    store(tmp_path).close()
    assert not orphan.exists() and fresh.exists()


# ---- settings ----


def test_the_data_directory_defaults_to_the_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == str(tmp_path / "xdg" / "cnnviz")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == str(tmp_path / "home" / ".local" / "share" / "cnnviz")
    monkeypatch.delenv("CNNVIZ_DATA_DIR", raising=False)
    assert Settings().data_dir == default_data_dir()


def test_in_process_records_follow_the_data_directory(tmp_path: Path) -> None:
    memory = inprocess_records(Settings(data_dir=":memory:"))
    assert isinstance(memory, MemoryRecords)
    memory.close()
    sqlite = inprocess_records(Settings(data_dir=str(tmp_path / "new" / "data")))
    assert isinstance(sqlite, SqliteRecords)
    assert (tmp_path / "new" / "data" / "jobs.db").is_file()  # created on start
    assert sqlite.results_dir == tmp_path / "new" / "data" / "results"
    sqlite.close()
    # The deprecated results directory still names where large results go.
    aliased = inprocess_records(
        Settings(data_dir=str(tmp_path / "d"), inprocess_results_dir=tmp_path / "old")
    )
    assert isinstance(aliased, SqliteRecords) and aliased.results_dir == tmp_path / "old"
    aliased.close()


def test_the_test_suite_never_writes_to_the_users_data_directory() -> None:
    assert os.environ["CNNVIZ_DATA_DIR"] == ":memory:"
    assert not default_data_dir().startswith(str(Path.home()))
