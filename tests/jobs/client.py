"""Helpers that drive the job API the way a client does: submit (checking the 202 and its
Location), read, wait and settle with the real client's :meth:`Client.wait`, decode. They
answer plain dicts, the JSON as the service sent it, which the tests' assertions read."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from cnnviz_client import ApiError, Client, JobFailed
from schemas.jobs import JobRead

MODEL = "shapes"
FINISHED = {"succeeded", "failed", "cancelled"}

# Small enough for two busy cores: a fraction of a second per job.
QUICK = {"layer": "block3.relu", "channels": [0, 5], "steps": 24, "image_size": 32}
# Long enough to be caught running: minutes if nobody stops it.
LONG = {"layer": "block3.relu", "channels": [1], "steps": 4096, "image_size": 64}
# Eight images compared by diversity, at 1024 px: about 1.6 GiB, over a CPU's 1024 MiB.
LARGE = {
    "layer": "block2.relu",
    "channels": [3],
    "images_per_unit": 8,
    "diversity": 1.0,
    "image_size": 1024,
    "steps": 1,
}

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
    seen: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait until the job's status is one of ``statuses`` (and it is past ``step``): the
    client's wait, polling as these tests always have; ``seen`` gets each reading.
    AssertionError if it ends otherwise, at the deadline, or on an error answer."""

    def reached(record: JobRead[Any, Any]) -> bool:
        done = record.progress.step if record.progress is not None else 0
        return record.status.value in statuses and done >= step

    def show(record: JobRead[Any, Any]) -> None:
        if seen is not None:
            seen(as_sent(record))

    try:
        found = Client(http=api).wait(
            job_id, until=reached, progress=show, timeout=timeout, poll_s=0.05, stream=False
        )
    except JobFailed as exc:
        ended = exc.job
        raise AssertionError(f"job {job_id} ended {ended.status.value}: {ended.error}") from None
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for job {job_id}") from None
    except ApiError as exc:
        raise AssertionError(f"reading job {job_id}: {exc}") from None
    return as_sent(found)


def as_sent(record: JobRead[Any, Any]) -> dict[str, Any]:
    """A job read as the JSON the service sent (the fields it sent, nothing added)."""
    return record.model_dump(mode="json", exclude_unset=True)


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    image.load()
    return image


def settle(api: httpx.Client, timeout: float = 60) -> None:
    """Cancel this client's unfinished jobs and wait until they have stopped."""
    client = Client(http=api)
    for job_id in _submitted.pop(id(api), []):
        try:
            if not client.job(job_id).status.finished:
                client.cancel(job_id)
                wait_job(api, job_id, timeout=timeout)
        except ApiError:  # forgotten already, or cancelled by its test meanwhile (409)
            continue
