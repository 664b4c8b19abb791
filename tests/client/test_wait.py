"""``Client.wait`` follows a job's event stream, and polls where the stream cannot be had."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cnnviz_client import ApiError, Client
from cnnviz_client.waiting import server_sent_events
from schemas.jobs import JobRead, JobStatus
from service.main import create_app
from service.settings import Settings
from tests.api.conftest import serve


class Recording(httpx.HTTPTransport):
    """A real transport that notes each request's method and path; ``refuse_events``: a
    connection error for event streams (as behind a proxy that does not pass them);
    ``no_events_route``: FastAPI's plain 404 for them (as from a service without streams)."""

    def __init__(self, refuse_events: bool = False, no_events_route: bool = False) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []
        self.refuse_events = refuse_events
        self.no_events_route = no_events_route

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.url.path.endswith("/events"):
            if self.refuse_events:
                raise httpx.ConnectError("no event streams here", request=request)
            if self.no_events_route:
                return httpx.Response(404, json={"detail": "Not Found"}, request=request)
        return super().handle_request(request)

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))


def test_wait_follows_the_stream_and_reads_the_job_once(service_url: str) -> None:
    seen: list[JobRead[Any, Any]] = []
    transport = Recording()
    with Client(service_url, transport=transport) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[0], steps=300, seed=11)
        done = client.wait(job.id, progress=seen.append, timeout=120, poll_s=0.01)
    assert done.status == JobStatus.SUCCEEDED and done.result is not None
    assert transport.count("GET", f"/v1/jobs/{job.id}/events") == 1
    assert transport.count("GET", f"/v1/jobs/{job.id}") == 1  # the finished job, no polls
    running = [j for j in seen if j.status == JobStatus.RUNNING and j.progress is not None]
    assert running, [j.status for j in seen]  # progress came as events while it ran
    steps = [j.progress.step for j in running if j.progress is not None]
    assert steps == sorted(steps)
    assert seen[-1].status == JobStatus.SUCCEEDED and seen[-1].result is not None


@pytest.mark.parametrize("without", ["refused", "no route"])
def test_without_a_stream_wait_polls_to_the_same_end(service_url: str, without: str) -> None:
    transport = Recording(refuse_events=without == "refused", no_events_route=without != "refused")
    with Client(service_url, transport=transport) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[1], steps=60, seed=12)
        done = client.wait(job.id, timeout=120, poll_s=0.02)
    assert done.status == JobStatus.SUCCEEDED and done.result is not None
    assert transport.count("GET", f"/v1/jobs/{job.id}/events") == 1
    assert transport.count("GET", f"/v1/jobs/{job.id}") >= 1


def test_a_stream_that_reaches_its_longest_is_opened_again() -> None:
    settings = Settings(
        redis_url=None,
        models_file=None,
        api_keys=None,
        job_progress_interval=0.1,
        events_poll_interval=0.05,
        events_max_seconds=0.3,
    )
    transport = Recording()
    with serve(create_app(settings)) as url, Client(url, transport=transport) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[2], steps=600, seed=13)
        done = client.wait(job.id, timeout=120)
    assert done.status == JobStatus.SUCCEEDED
    assert transport.count("GET", f"/v1/jobs/{job.id}/events") >= 2


def test_wait_on_a_stream_stops_at_its_timeout_and_an_unknown_job_is_a_404(
    service_url: str,
) -> None:
    with Client(service_url) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[3], steps=4000, seed=14)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait(job.id, timeout=1.0)
        assert time.monotonic() - start < 10
        client.cancel(job.id)
        with pytest.raises(ApiError) as caught:
            client.wait("0" * 32, timeout=10)
    assert caught.value.status == 404


def testserver_sent_events_are_parsed_as_the_format_says() -> None:
    lines = [
        "retry: 2000",
        "",
        ": heartbeat",
        "",
        "event: progress",
        'data: {"a":',
        "data: 1}",
        "",
        "data:no space",
        "",
        "event: end",
        "data: {}",
        "",
    ]
    assert list(server_sent_events(iter(lines))) == [
        ("", ""),
        ("progress", '{"a":\n1}'),
        ("message", "no space"),
        ("end", "{}"),
    ]
