"""The embedded default keeps its jobs across a restart of the API (real processes).

The API runs as ``uvicorn service.main:app`` with in-process jobs and a data directory of
the test's own; it is killed (SIGKILL: a crash, the OOM killer) or stopped (SIGTERM: an
upgrade) with one job finished and one running, and started again on the same directory:
the finished job reads the same, byte for byte and ETag for ETag, and the running one
resumes from its last checkpoint (its progress never goes back to 0) to the result an
uninterrupted run gives.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cnnviz.optvis import RenderCheckpoint
from tests.jobs.client import MODEL, QUICK, job, submit, wait_job
from tests.jobs.procs import ApiProcess, wait_for

pytestmark = [pytest.mark.slow]

CHECKPOINT_STEPS = 10
# Long enough to be caught after a few checkpoints, short enough to finish in seconds.
RESUMABLE = {"layer": "block3.relu", "channels": [2, 7], "steps": 400, "image_size": 48}
PERSISTENT = {
    "CNNVIZ_JOB_CHECKPOINT_STEPS": str(CHECKPOINT_STEPS),
    "CNNVIZ_JOB_CHECKPOINT_INTERVAL": "0",
    "CNNVIZ_LEASE_SWEEP_INTERVAL": "1",
}


def _api(tmp_path: Path, **env: str) -> ApiProcess:
    return ApiProcess(tmp_path, {**PERSISTENT, "CNNVIZ_DATA_DIR": str(tmp_path / "data"), **env})


def _finished_view(api: httpx.Client, job_id: str) -> dict[str, Any]:
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


def _checkpoint_step(data_dir: Path, job_id: str) -> int:
    """The step of the job's latest checkpoint, read from the store as the next start will."""
    with sqlite3.connect(data_dir / "jobs.db") as db:
        row = db.execute(
            "SELECT data, path FROM parts WHERE job_id = ? AND name = 'checkpoint'", (job_id,)
        ).fetchone()
    assert row is not None, "no checkpoint saved"
    data = row[0] if row[1] is None else (data_dir / "results" / row[1]).read_bytes()
    return RenderCheckpoint.from_bytes(bytes(data)).step


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_restart_keeps_finished_jobs_and_resumes_running_ones(
    tmp_path: Path, signum: int
) -> None:
    server = _api(tmp_path)
    try:
        server.start()
        with server.client() as api:
            done_id = submit(api, QUICK)["id"]
            assert wait_job(api, done_id)["status"] == "succeeded"
            before = _finished_view(api, done_id)
            long_id = submit(api, RESUMABLE)["id"]
            wait_job(api, long_id, {"running"}, step=4 * CHECKPOINT_STEPS)
            # One job thread: this one waits behind the long one.
            queued_id = submit(api, {**QUICK, "seed": 77})["id"]
            assert job(api, queued_id)["status"] == "queued"
            code = server.send(signum)
            stopped_at = time.monotonic()
        if signum == signal.SIGTERM:  # a clean stop (uvicorn then exits by the signal)
            assert code in (0, -signal.SIGTERM), server.log()
            assert "Application shutdown complete" in server.log(), server.log()
            assert f"job {long_id}: attempt 1 stopped with the process" in server.log()
        saved = _checkpoint_step(tmp_path / "data", long_id)
        assert saved >= 3 * CHECKPOINT_STEPS

        server.start()
        with server.client() as api:
            ready_s = time.monotonic() - stopped_at
            # The finished job reads as it did: same bytes, same ETags.
            assert _finished_view(api, done_id) == before
            steps_seen: list[int] = []

            def finished() -> dict[str, Any] | None:
                record = job(api, long_id)
                steps_seen.append((record["progress"] or {}).get("step", 0))
                return record if record["status"] in {"succeeded", "failed"} else None

            done = wait_for(finished, 120, f"job {long_id} to finish after the restart")
            recovered_s = time.monotonic() - stopped_at
            assert done["status"] == "succeeded", done["error"]
            assert done["attempts"] == 2
            assert min(steps_seen) >= saved  # never back to 0
            queued = wait_job(api, queued_id, timeout=60)
            assert queued["status"] == "succeeded", queued["error"]
            assert queued["attempts"] == 1
            log = server.log(tail=None)
            assert f"job {long_id}: resumed" in log
            assert f"job {queued_id}: resumed" in log
            assert f"job {long_id}: resuming from step {saved} " in log

            # An uninterrupted run of the same request gives the same pictures and values.
            again = wait_job(api, submit(api, RESUMABLE)["id"], timeout=120)
            assert [u["objective"] for u in again["result"]["units"]] == [
                u["objective"] for u in done["result"]["units"]
            ]
            for path in ("result.png", "units/0.png"):
                ours = api.get(f"/v1/jobs/{long_id}/{path}")
                theirs = api.get(f"/v1/jobs/{again['id']}/{path}")
                assert ours.content == theirs.content
        print(
            f"{signal.Signals(signum).name}: API answering again {ready_s:.1f} s after the stop, "
            f"resumed job finished {recovered_s:.1f} s after it"
        )
    finally:
        server.stop()


def test_the_data_directory_is_created_and_holds_the_store(tmp_path: Path) -> None:
    server = _api(tmp_path)
    try:
        server.start()
        assert (tmp_path / "data" / "jobs.db").is_file()
        with server.client() as api:
            assert api.get(f"/v1/models/{MODEL}").status_code in (200, 404)
    finally:
        server.stop()


def _holder_pid(data_dir: Path, job_id: str) -> int:
    """The pid of the process that holds the job (host/pid/start/token)."""
    with sqlite3.connect(data_dir / "jobs.db") as db:
        (holder,) = db.execute("SELECT holder FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return int(holder.split("/")[1])


def test_two_worker_processes_on_one_data_directory_run_each_job_once(tmp_path: Path) -> None:
    """``uvicorn --workers 2``: both processes take submissions and answer for every job
    (one store); each job runs once, in the process that took it; and when that process is
    killed mid-job, the other takes the job over from its checkpoint."""
    server = ApiProcess(
        tmp_path, {**PERSISTENT, "CNNVIZ_DATA_DIR": str(tmp_path / "data")}, workers=2
    )
    try:
        server.start()
        long_id = ""
        with server.client() as api:
            ids = [submit(api, {**QUICK, "seed": 300 + i})["id"] for i in range(6)]
            long_id = submit(api, RESUMABLE)["id"]
            for job_id in ids:
                # New connections: the kernel hands them to either process.
                with server.client() as other:
                    done = wait_job(other, job_id, timeout=120)
                assert done["status"] == "succeeded", done["error"]
                assert done["attempts"] == 1
            wait_job(api, long_id, {"running"}, step=4 * CHECKPOINT_STEPS)
            holder = _holder_pid(tmp_path / "data", long_id)
            os.kill(holder, signal.SIGKILL)
            killed_at = time.monotonic()
            saved = _checkpoint_step(tmp_path / "data", long_id)
        with server.client() as api:
            done = wait_job(api, long_id, timeout=120)
            assert done["status"] == "succeeded", done["error"]
            assert done["attempts"] == 2
            print(
                f"a killed worker process's job finished {time.monotonic() - killed_at:.1f} s later"
            )
        log = server.log(tail=None)
        for job_id in [*ids, long_id]:
            assert log.count(f"job {job_id} succeeded") == 1, job_id
        assert f"job {long_id}: resuming from step {saved} " in log
    finally:
        server.stop()
