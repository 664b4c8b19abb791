"""Plain helpers that drive the job API the way a client does: submit, poll, decode."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from tests.jobs.procs import wait_for

MODEL = "shapes"
FINISHED = {"succeeded", "failed", "cancelled"}

# Small enough for two busy cores: a fraction of a second per job.
QUICK = {"layer": "block3.relu", "channels": [0, 5], "steps": 24, "image_size": 32}
# Long enough to be caught running: minutes if nobody stops it.
LONG = {"layer": "block3.relu", "channels": [1], "steps": 4096, "image_size": 64}

_submitted: dict[int, list[str]] = {}


def submit(
    api: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """POST a job to run now (never a reused one); asserts the 202 and its Location."""
    headers = {"Cache-Control": "no-cache", **(headers or {})}
    response = api.post(f"/v1/models/{MODEL}/optimizations", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    _submitted.setdefault(id(api), []).append(job["id"])
    return job


def job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def wait_job(
    api: httpx.Client,
    job_id: str,
    statuses: set[str] = FINISHED,
    timeout: float = 60,
    step: int = 0,
) -> dict[str, Any]:
    """Poll until the job's status is one of ``statuses`` (and it is past ``step``)."""

    def reached() -> dict[str, Any] | None:
        record = job(api, job_id)
        progress = record.get("progress") or {}
        if record["status"] in statuses and progress.get("step", 0) >= step:
            return record
        if record["status"] in FINISHED and record["status"] not in statuses:
            raise AssertionError(f"job {job_id} ended {record['status']}: {record.get('error')}")
        return None

    result: dict[str, Any] = wait_for(reached, timeout, f"job {job_id} to be {statuses}")
    return result


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    image.load()
    return image


def settle(api: httpx.Client, timeout: float = 60) -> None:
    """Cancel this client's unfinished jobs and wait until they have stopped."""
    for job_id in _submitted.pop(id(api), []):
        record = api.get(f"/v1/jobs/{job_id}")
        if record.status_code == 200 and record.json()["status"] not in FINISHED:
            api.post(f"/v1/jobs/{job_id}/cancel")
            wait_job(api, job_id, timeout=timeout)
