"""Job metrics in /metrics and the job id in log lines, with both transports."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.jobs.client import LONG, QUICK, submit, wait_job
from tests.jobs.procs import CeleryWorker, wait_for
from workers.logs import JobIdFilter

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(api: httpx.Client) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_jobs_by_kind_and_status_and_their_duration(api: httpx.Client) -> None:
    before = samples(api)
    assert value(before, "cnnviz_job_metrics_up") == 1
    # Every kind and status has a series, zeros included.
    assert ("cnnviz_jobs", frozenset({"kind": "attribution", "status": "failed"}.items())) in before
    created = submit(api, {**QUICK, "seed": 41})
    assert wait_job(api, created["id"])["status"] == "succeeded"

    succeeded = {"kind": "optimization", "status": "succeeded"}
    count = "cnnviz_job_duration_seconds_count"
    # The worker counts the duration right after its final write: await it.
    after = wait_for(
        lambda: (
            (found := samples(api))[(count, frozenset(succeeded.items()))]
            == value(before, count, **succeeded) + 1
            and found
        ),
        30,
        "the job's duration to be counted",
    )
    assert value(after, "cnnviz_jobs", **succeeded) == value(before, "cnnviz_jobs", **succeeded) + 1
    total = "cnnviz_job_duration_seconds_sum"
    assert value(after, total, **succeeded) > value(before, total, **succeeded)
    inf = "cnnviz_job_duration_seconds_bucket"
    assert value(after, inf, le="+Inf", **succeeded) == value(after, count, **succeeded)
    assert value(after, "cnnviz_job_workers") == 1


def test_queue_depth_counts_the_jobs_waiting_for_a_worker(api: httpx.Client) -> None:
    running = submit(api, LONG)
    wait_job(api, running["id"], {"running"})
    waiting = submit(api, {**LONG, "seed": 1})
    wait_for(lambda: value(samples(api), "cnnviz_job_queue_depth") == 1, 30, "a queue depth of 1")
    queued = {"kind": "optimization", "status": "queued"}
    assert value(samples(api), "cnnviz_jobs", **queued) >= 1
    api.post(f"/v1/jobs/{waiting['id']}/cancel")
    api.post(f"/v1/jobs/{running['id']}/cancel")
    wait_job(api, running["id"])
    wait_for(lambda: value(samples(api), "cnnviz_job_queue_depth") == 0, 30, "an empty queue")


@pytest.fixture
def job_lines() -> Iterator[list[logging.LogRecord]]:
    """The API process's log records, as its handler sees them (with the job filter)."""
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    handler = Keep()
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)


def test_log_lines_about_a_job_carry_its_id(
    api: httpx.Client, job_lines: list[logging.LogRecord], request: pytest.FixtureRequest
) -> None:
    created = submit(api, {**QUICK, "seed": 42})
    wait_job(api, created["id"])
    job_id = created["id"]
    # The API's and the workers' lines (not this test's own HTTP client's).
    about = [r for r in job_lines if job_id in r.getMessage() and r.name != "httpx"]
    assert about, "no log line names the job"
    assert all(r.job_id == job_id for r in about), [(r.getMessage(), r.job_id) for r in about]  # type: ignore[attr-defined]
    api_lines = [r for r in about if r.name == "service.routers.jobs"]
    assert len(api_lines) == 1 and "created" in api_lines[0].getMessage()
    if "celery" in request.node.callspec.id:
        worker: CeleryWorker = request.getfixturevalue("shared_worker")
        lines = [
            line for line in worker.log(None).splitlines() if f"job {job_id} succeeded" in line
        ]
        assert lines and all(f"job={job_id}" in line for line in lines), lines
    else:
        ran = [r for r in about if r.name == "workers.run"]
        assert ran and all(r.job_id == job_id for r in ran)  # type: ignore[attr-defined]
