"""What every case of the fault matrix measures and checks: a job followed across a fault
over HTTP (outages included), and the time from the fault to its recovery."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.jobs.client import FINISHED, submit, wait_job

# The embedded default's jobs checkpoint every 10 steps in these cases (25 by default).
CHECKPOINT_STEPS = 10
# Caught after a few checkpoints and done a few seconds later on a busy core (40 ms a step).
RESUMABLE = {"layer": "block3.relu", "channels": [2], "steps": 160, "image_size": 32}
# The step at which a case injects its fault into RESUMABLE.
FAULT_STEP = 4 * CHECKPOINT_STEPS


@dataclass(frozen=True)
class Recovery:
    """Seconds from the end of a fault (a signal, Redis answering again, a resumed Redis)
    to: the API or ``/readyz`` answering again; the interrupted job past the step it had
    reached at the fault (its lost work done again); every job of the case ended."""

    answering_s: float | None
    progressing_s: float
    ended_s: float


@dataclass
class Follow:
    """One job read until it ends, through outages (a refused connection, a 503 are noted
    and read again). ``past``: the step it had reached at the fault; ``floor``: the step its
    progress must never read below (its checkpoint)."""

    api: httpx.Client
    job_id: str
    since: float
    past: int
    floor: int = 0
    progressing_s: float | None = None
    steps: list[int] | None = None

    def read(self) -> dict[str, Any] | None:
        """One reading: the record, or None while the API cannot answer."""
        try:
            response = self.api.get(f"/v1/jobs/{self.job_id}", timeout=5)
        except httpx.HTTPError:
            return None
        if response.status_code == 503:
            return None
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        step = (record.get("progress") or {}).get("step", 0)
        if record["status"] == "running" or record["status"] in FINISHED:
            assert step >= self.floor, f"job {self.job_id} went back to step {step}"
        if self.progressing_s is None and (step > self.past or record["status"] in FINISHED):
            self.progressing_s = time.monotonic() - self.since
        return record

    def until_ended(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.read()
            if record is not None and record["status"] in FINISHED:
                return record
            assert time.monotonic() < deadline, f"job {self.job_id} did not end in {timeout} s"
            time.sleep(0.05)

    def recovery(self, answering_s: float | None, ended_s: float) -> Recovery:
        """The case's :class:`Recovery`: ``progressing_s`` as this job was seen progressing
        again (it must have been)."""
        assert self.progressing_s is not None, f"job {self.job_id} was never seen progressing"
        return Recovery(answering_s, self.progressing_s, ended_s)


def caught_running(api: httpx.Client, via: httpx.Client | None = None) -> str:
    """A RESUMABLE job submitted to ``api`` and caught running past FAULT_STEP (read through
    ``via``, by default ``api`` too): its id."""
    long_id: str = submit(api, RESUMABLE)["id"]
    wait_job(via or api, long_id, {"running"}, step=FAULT_STEP)
    return long_id


def step_of(api: httpx.Client, job_id: str) -> int:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return int((response.json().get("progress") or {}).get("step", 0))


def succeeded_once(log: str, job_ids: list[str]) -> None:
    """Each job's result was written once: one ``job <id> succeeded`` line (logged after
    the final write, by the attempt that wrote it only)."""
    for job_id in job_ids:
        count = len(re.findall(rf"job {job_id} succeeded", log))
        assert count == 1, f"job {job_id} succeeded {count} times"


def logs(*paths: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in paths)
