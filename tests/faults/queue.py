"""Faults of the Celery transport: a Redis server of the case's own (append-only file,
fsynced at every write, as in production), Celery worker groups as real processes, and the
API on it served by uvicorn in this process.

Each case runs a job long enough to be caught mid-run and a job queued behind it (one pool
child), asserts that both end succeeded with one result each, and answers its
:class:`Recovery`; the tests and ``bench/faults.py`` run them alike. The Redis cases leave
their worker running: one worker (``LEASE_SOON``) may serve both.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from cnnviz.optvis import RenderCheckpoint
from service.main import create_app
from tests.faults.watch import (
    CHECKPOINT_STEPS,
    Follow,
    Recovery,
    caught_running,
    step_of,
    succeeded_once,
)
from tests.jobs.client import FINISHED, QUICK, submit
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve
from workers.records.redis_keys import Part, part_key

# A lost worker's lease lapses after 3 s (30 by default), and the API sweeps every 0.5 s
# (10): a lost job comes back in seconds. Celery's visibility timeout stays at its hour, so
# what comes back comes back through the lease.
LEASE_SOON = {
    "CNNVIZ_JOB_LEASE_INTERVAL": "0.5",
    "CNNVIZ_JOB_LEASE_TIMEOUT": "3",
    "CNNVIZ_JOB_CHECKPOINT_STEPS": str(CHECKPOINT_STEPS),
    "CNNVIZ_JOB_CHECKPOINT_INTERVAL": "0",
}
SWEEP_SOON = 0.5


@contextmanager
def _api(redis_server: RedisServer) -> Iterator[httpx.Client]:
    settings = api_settings(redis_server.url, lease_sweep_interval=SWEEP_SOON)
    with serve(create_app(settings)) as api:
        yield api


class _Caught(NamedTuple):
    """A resumable job caught running past FAULT_STEP, and a job queued behind it: their
    ids and the step the first had reached."""

    long_id: str
    queued_id: str
    past: int


def _caught(api: httpx.Client) -> _Caught:
    long_id = caught_running(api)
    queued_id = submit(api, {**QUICK, "seed": 77})["id"]
    return _Caught(long_id, queued_id, step_of(api, long_id))


def _recovered(api: httpx.Client, worker: CeleryWorker, caught: _Caught) -> Recovery:
    """From now, the end of the fault: read ``/readyz`` and the long job until both are back
    (ready, job ended); then the queued job to its end. Each wrote one result (``worker``'s
    log says so); times from now."""
    long_id, queued_id, past = caught
    follow = Follow(api, long_id, time.monotonic(), past=past)
    ready_s: float | None = None
    deadline = time.monotonic() + 120
    ended = None
    while ready_s is None or ended is None:
        if ready_s is None and _ready(api):
            ready_s = time.monotonic() - follow.since
        record = follow.read()
        if ended is None and record is not None and record["status"] in FINISHED:
            ended = record
        assert time.monotonic() < deadline, "no recovery in 120 s"
        time.sleep(0.05)
    assert ended["status"] == "succeeded", ended["error"]
    ended_s = _queued_ends(api, queued_id, follow.since)
    succeeded_once(worker.log(tail=None), [long_id, queued_id])
    return follow.recovery(ready_s, ended_s)


def _ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _queued_ends(api: httpx.Client, queued_id: str, since: float) -> float:
    """Wait for the queued job to succeed; seconds since ``since``."""
    queued = Follow(api, queued_id, since, past=0).until_ended()
    assert queued["status"] == "succeeded", queued["error"]
    return time.monotonic() - since


def _lapsed(metrics: str) -> float:
    """How many running jobs' leases the API saw lapse."""
    found = re.search(r'^cnnviz_job_leases_lapsed_total\{action="job"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def worker_group_killed(redis_server: RedisServer, workdir: Path) -> Recovery:
    """The whole process group of the worker running a job SIGKILLed (a machine lost:
    nothing acknowledged, nothing renewed) and a new worker started: the job's lease lapses,
    the API sends it again, and the new worker resumes it from its last checkpoint.
    ``answering_s``: the new worker answering."""
    first = CeleryWorker(redis_server.url, workdir, LEASE_SOON).start()
    second = CeleryWorker(redis_server.url, workdir, LEASE_SOON)
    try:
        with _api(redis_server) as api:
            long_id, queued_id, past = _caught(api)
            first.kill()
            killed_at = time.monotonic()
            data = redis_server.client().get(part_key(long_id, Part.CHECKPOINT))
            assert isinstance(data, bytes), "no checkpoint saved"
            saved = RenderCheckpoint.from_bytes(data)
            second.start()
            answering_s = time.monotonic() - killed_at
            follow = Follow(api, long_id, killed_at, past=past, floor=saved.step)
            done = follow.until_ended()
            assert done["status"] == "succeeded", done["error"]
            ended_s = _queued_ends(api, queued_id, killed_at)
            assert api.get(f"/v1/jobs/{long_id}").json()["attempts"] == 2
            # Once, or more where the new worker took more than a lease to start.
            assert _lapsed(api.get("/metrics").text) >= 1
        assert f"resuming from step {saved.step} " in second.log(tail=None)
        succeeded_once(first.log(tail=None) + second.log(tail=None), [long_id, queued_id])
        return follow.recovery(answering_s, ended_s)
    finally:
        first.stop()
        second.stop()


def redis_restarted(redis_server: RedisServer, worker: CeleryWorker) -> Recovery:
    """Redis crashed (SIGKILL) mid-job and started again on its append-only file: the
    queued job is still queued, the running one goes on (or is sent again and resumes),
    each writes one result. Times from Redis answering again."""
    with _api(redis_server) as api:
        caught = _caught(api)
        redis_server.send(signal.SIGKILL)
        redis_server.start()
        return _recovered(api, worker, caught)


def redis_paused(redis_server: RedisServer, worker: CeleryWorker, pause_s: float = 30) -> Recovery:
    """Redis stopped (SIGSTOP) for ``pause_s`` mid-job, its connections open and silent (a
    stalled VM, a long fork), then resumed: meanwhile the API answers (a 503 while Redis
    cannot, never a hang); after, the jobs end with one result each, though the running
    job's lease lapsed in the pause. Times from SIGCONT."""
    with _api(redis_server) as api:
        caught = _caught(api)
        redis_server.send(signal.SIGSTOP)
        resume_at = time.monotonic() + pause_s
        try:
            while time.monotonic() < resume_at:
                asked = time.monotonic()
                status = api.get(f"/v1/jobs/{caught.long_id}", timeout=30).status_code
                assert status in (200, 503) and time.monotonic() - asked < 12, status
                time.sleep(1)
        finally:
            redis_server.send(signal.SIGCONT)
        return _recovered(api, worker, caught)
