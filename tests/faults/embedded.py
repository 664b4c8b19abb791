"""Faults of the embedded default: ``uvicorn service.main:app`` with in-process jobs and
SQLite under a data directory of the case's own, run as real processes.

Each case asserts what the fault matrix promises (nothing lost, no result written twice,
every job ends) and answers its :class:`Recovery`; the tests and ``bench/faults.py`` run
them alike.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from cnnviz.optvis import RenderCheckpoint
from tests.faults.watch import (
    CHECKPOINT_STEPS,
    FAULT_STEP,
    Follow,
    Recovery,
    caught_running,
    step_of,
    succeeded_once,
)
from tests.jobs.client import QUICK, job, submit, wait_job
from tests.jobs.procs import ApiProcess

# A result past the 64 KiB the database keeps inline: its result goes to a file.
FILED = {"layer": "block3.relu", "channels": [0, 1, 2, 3], "steps": 40, "image_size": 64}
PERSISTENT = {
    "CNNVIZ_JOB_CHECKPOINT_STEPS": str(CHECKPOINT_STEPS),
    "CNNVIZ_JOB_CHECKPOINT_INTERVAL": "0",
    "CNNVIZ_LEASE_SWEEP_INTERVAL": "1",
}


def api_on(workdir: Path, app: str = "service.main:app", **env: str) -> ApiProcess:
    """An API process on the data directory ``workdir/data``."""
    data = {**PERSISTENT, "CNNVIZ_DATA_DIR": str(workdir / "data"), **env}
    return ApiProcess(workdir, data, app=app)


def finished_view(api: httpx.Client, job_id: str) -> dict[str, Any]:
    """What a client sees of a finished job: the JSON and its ETag, the grid and its ETag."""
    read = api.get(f"/v1/jobs/{job_id}")
    grid = api.get(f"/v1/jobs/{job_id}/result.png")
    assert read.status_code == 200 and grid.status_code == 200, (read.text, grid.text)
    return {
        "json": read.content,
        "etag": read.headers["ETag"],
        "grid": grid.content,
        "grid_etag": grid.headers["ETag"],
    }


def checkpoint_step(data_dir: Path, job_id: str) -> int:
    """The step of the job's latest checkpoint, read from the store as the next start will."""
    with sqlite3.connect(data_dir / "jobs.db") as db:
        row = db.execute(
            "SELECT data, path FROM parts WHERE job_id = ? AND name = 'checkpoint'", (job_id,)
        ).fetchone()
    assert row is not None, "no checkpoint saved"
    data = row[0] if row[1] is None else (data_dir / "results" / row[1]).read_bytes()
    return RenderCheckpoint.from_bytes(bytes(data)).step


def result_path(data_dir: Path, job_id: str) -> str | None:
    """The file that holds the job's result, None when the database holds it inline."""
    with sqlite3.connect(data_dir / "jobs.db") as db:
        (path,) = db.execute(
            "SELECT path FROM parts WHERE job_id = ? AND name = 'result'", (job_id,)
        ).fetchone()
    return str(path) if path is not None else None


def holder_pid(data_dir: Path, job_id: str) -> int:
    """The pid of the process that holds the job (``host/pid/start/token``)."""
    with sqlite3.connect(data_dir / "jobs.db") as db:
        (holder,) = db.execute("SELECT holder FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return int(holder.split("/")[1])


def api_restarted(workdir: Path, signum: int) -> Recovery:
    """The API stopped by ``signum`` with a job finished, one running and one queued, and
    started again on the same data directory: the finished job reads the same (200, same
    bytes, same ETags), the running one resumes from its checkpoint (as attempt 2, its
    progress never below it), the queued one runs once."""
    server = api_on(workdir)
    try:
        server.start()
        with server.client() as api:
            done_id = submit(api, QUICK)["id"]
            assert wait_job(api, done_id)["status"] == "succeeded"
            before = finished_view(api, done_id)
            long_id = caught_running(api)
            queued_id = submit(api, {**QUICK, "seed": 77})["id"]  # behind the one job thread
            assert job(api, queued_id)["status"] == "queued"
            past = step_of(api, long_id)
            code = server.send(signum)
            stopped_at = time.monotonic()
        if signum == signal.SIGTERM:  # a clean stop: the job is kept running for the next start
            assert code in (0, -signal.SIGTERM), server.log()
            assert "Application shutdown complete" in server.log(), server.log()
            assert f"job {long_id}: attempt 1 stopped with the process" in server.log()
        saved = checkpoint_step(workdir / "data", long_id)
        assert saved >= FAULT_STEP - CHECKPOINT_STEPS

        server.start()
        answering_s = time.monotonic() - stopped_at
        with server.client() as api:
            assert finished_view(api, done_id) == before
            follow = Follow(api, long_id, stopped_at, past=past, floor=saved)
            resumed = follow.until_ended()
            assert resumed["status"] == "succeeded", resumed["error"]
            assert resumed["attempts"] == 2
            queued = wait_job(api, queued_id)
            assert queued["status"] == "succeeded", queued["error"]
            assert queued["attempts"] == 1
            ended_s = time.monotonic() - stopped_at
        log = server.log(tail=None)
        assert f"job {long_id}: resuming from step {saved} " in log
        succeeded_once(log, [done_id, long_id, queued_id])
        return follow.recovery(answering_s, ended_s)
    finally:
        server.stop()


def disk_fails(workdir: Path) -> Recovery:
    """Every file write under the data directory fails with EROFS from the middle of a job
    on (``tests.faults.failing_disk``): the job fails with ``storage_error`` and the reason,
    finished jobs still read, and once the disk is back a new job succeeds.
    ``progressing_s``: the fault to the job's clean failure."""
    marker = workdir / "disk-failing"
    server = api_on(workdir, "tests.faults.failing_disk:app", CNNVIZ_TEST_FAILING_DISK=str(marker))
    try:
        server.start()
        with server.client() as api:
            done_id = submit(api, FILED)["id"]
            assert wait_job(api, done_id)["status"] == "succeeded"
            assert result_path(workdir / "data", done_id) is not None
            before = finished_view(api, done_id)
            big_id = submit(api, {**FILED, "seed": 1})["id"]
            wait_job(api, big_id, {"running"}, step=2)
            marker.touch()
            failing_at = time.monotonic()
            failed = wait_job(api, big_id, {"failed", "succeeded"})
            failed_s = time.monotonic() - failing_at
            assert failed["status"] == "failed"
            assert failed["error"]["code"] == "storage_error"
            assert "Read-only file system" in failed["error"]["message"]
            assert finished_view(api, done_id) == before
            assert api.get("/healthz").status_code == 200
            marker.unlink()
            again = wait_job(api, submit(api, {**FILED, "seed": 2})["id"])
            assert again["status"] == "succeeded", again["error"]
            ended_s = time.monotonic() - failing_at
        # Its checkpoints were refused too, and it went on to its end.
        assert f"job {big_id}: checkpoint not kept: [Errno 30]" in server.log(tail=None)
        return Recovery(None, failed_s, ended_s)
    finally:
        server.stop()


def two_apis(workdir: Path) -> Recovery:
    """Two API processes on one data directory: each answers for every job, each job runs
    once, and when the one that runs a job is killed, the other resumes it from its
    checkpoint. ``answering_s``: none (the other answers throughout)."""
    first, second = api_on(workdir), api_on(workdir)
    try:
        first.start()
        second.start()
        with first.client() as one, second.client() as two:
            ids = [submit(api, {**QUICK, "seed": i})["id"] for i, api in enumerate([one, two])]
            for job_id in ids:
                for api in (one, two):
                    assert wait_job(api, job_id)["status"] == "succeeded"
            long_id = caught_running(one, via=two)
            assert first.process is not None
            assert holder_pid(workdir / "data", long_id) == first.process.pid
            past = step_of(two, long_id)
            first.send(signal.SIGKILL)
            killed_at = time.monotonic()
            saved = checkpoint_step(workdir / "data", long_id)
            follow = Follow(two, long_id, killed_at, past=past, floor=saved)
            resumed = follow.until_ended()
            assert resumed["status"] == "succeeded", resumed["error"]
            assert resumed["attempts"] == 2
            ended_s = time.monotonic() - killed_at
        log = first.log(tail=None) + second.log(tail=None)
        assert f"job {long_id}: resuming from step {saved} " in second.log(tail=None)
        succeeded_once(log, [*ids, long_id])
        return follow.recovery(None, ended_s)
    finally:
        first.stop()
        second.stop()
