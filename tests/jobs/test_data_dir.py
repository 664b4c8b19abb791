"""The embedded default's data directory, with the API as a real process
(``uvicorn service.main:app``, in-process jobs): created on start, and shared by the
processes of ``uvicorn --workers 2``. What a restart and other faults do to its jobs is the
fault matrix's (tests/faults).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.embedded import PERSISTENT, api_on, checkpoint_step, holder_pid
from tests.faults.watch import FAULT_STEP, RESUMABLE
from tests.jobs.client import MODEL, QUICK, submit, wait_job
from tests.jobs.procs import ApiProcess

pytestmark = [pytest.mark.slow]


def test_the_data_directory_is_created_and_holds_the_store(tmp_path: Path) -> None:
    server = api_on(tmp_path)
    try:
        server.start()
        assert (tmp_path / "data" / "jobs.db").is_file()
        with server.client() as api:
            assert api.get(f"/v1/models/{MODEL}").status_code == 200
    finally:
        server.stop()


def test_two_worker_processes_on_one_data_directory_run_each_job_once(tmp_path: Path) -> None:
    """``uvicorn --workers 2``: both processes take submissions and answer for every job
    (one store); each job runs once, in the process that took it; and when that process is
    killed mid-job, the other takes the job over from its checkpoint."""
    data = tmp_path / "data"
    server = ApiProcess(tmp_path, {**PERSISTENT, "CNNVIZ_DATA_DIR": str(data)}, workers=2)
    try:
        server.start()
        with server.client() as api:
            ids = [submit(api, {**QUICK, "seed": 300 + i})["id"] for i in range(4)]
            for job_id in ids:
                # New connections: the kernel hands them to either process.
                with server.client() as other:
                    done = wait_job(other, job_id, timeout=120)
                assert done["status"] == "succeeded", done["error"]
                assert done["attempts"] == 1
            long_id = submit(api, RESUMABLE)["id"]
            wait_job(api, long_id, {"running"}, step=FAULT_STEP)
            os.kill(holder_pid(data, long_id), signal.SIGKILL)
            killed_at = time.monotonic()
            saved = checkpoint_step(data, long_id)
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
