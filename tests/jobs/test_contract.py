"""The OpenAPI contract, held by schemathesis over the whole document: every check, bounded
examples, both transports, with and without API keys; zero failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from service.main import create_app
from tests.jobs.client import wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, serve
from workers.records.redis import record_key

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
KEYS = "contract-k1,contract-k2"
# The fuzzer's jobs must stay small: a generated request may ask for 4096 steps of 512
# images of 1024 px, which these limits refuse (422) before anything is queued.
SMALL_JOBS = {"max_job_work": 64 * 64 * 16 * 16}


def _run_schemathesis(base_url: str, key: str | None) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "8",
        "--seed",
        "20261127",
        "--workers",
        "1",
        "--no-color",
        # As the response time check: a hang detector, not a speed limit (shared cores, and
        # the fuzzer's own jobs run in the API process with the in-process transport).
        "--request-timeout",
        "120",
    ]
    if key is not None:
        command += ["--header", f"X-API-Key: {key}"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("keys", [None, KEYS], ids=["no-keys", "keys"])
@pytest.mark.parametrize("transport", ["in-process", "celery"])
def test_schemathesis_finds_no_failure(
    transport: str, keys: str | None, request: pytest.FixtureRequest
) -> None:
    redis_url = None
    if transport == "celery":
        worker: CeleryWorker = request.getfixturevalue("shared_worker")
        redis_url = worker.redis_url
    settings = api_settings(redis_url, api_keys=keys, **SMALL_JOBS)
    before = set() if redis_url is None else _job_ids(redis_url)
    with serve(create_app(settings)) as client:
        key = keys.split(",")[0] if keys else None
        run = _run_schemathesis(str(client.base_url).rstrip("/"), key)
        if key is not None:
            client.headers["X-API-Key"] = key
        if redis_url is not None:  # in-process jobs are cancelled when the app stops
            _cancel_fuzzed(client, _job_ids(redis_url) - before)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "failures" not in run.stdout.splitlines()[-1], run.stdout[-5000:]


def _job_ids(redis_url: str) -> set[str]:
    """The ids of the job records in the shared Redis."""
    records = redis.Redis.from_url(redis_url).scan_iter(match=record_key("*"))
    ids = {key.decode().removeprefix(record_key("")) for key in records}
    return {i for i in ids if ":" not in i}


def _cancel_fuzzed(client: httpx.Client, job_ids: set[str]) -> None:
    """Leave no fuzzed job for the shared worker: cancel every unfinished one, wait for it.
    Only the fuzzer's: records that other test files left in the shared Redis (a running job
    with no worker, as tests/jobs/test_worker.py plants one) would never end."""
    for job_id in sorted(job_ids):
        if client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202:
            wait_job(client, job_id, timeout=120)
