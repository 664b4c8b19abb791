"""The client alone, with no service and nothing of the server imported: these run in a venv
that holds only the client's distribution (``pip install ./client pytest``; see
docs/client.md), as well as in the full one."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import httpx
import pytest

from cnnviz_client import ApiError, Client, JobFailed
from cnnviz_client.cli import main, parse_channels
from cnnviz_client.routes import path
from cnnviz_client.waiting import server_sent_events

SERVER = importlib.util.find_spec("service") is not None


def job_json(status: str, step: int, **more: Any) -> dict[str, Any]:
    return {
        "id": "j1",
        "kind": "optimization",
        "model": "shapes",
        "status": status,
        "request": {"layer": "block3.relu"},
        "progress": {"step": step, "total": 4},
        "created_at": "2026-01-01T00:00:00Z",
        **more,
    }


class Canned:
    """A service that answers the job ``j1`` from a script of readings, and 404 else."""

    def __init__(self, readings: list[dict[str, Any]]) -> None:
        self.readings = readings
        self.reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1":
            reading = self.readings[min(self.reads, len(self.readings) - 1)]
            self.reads += 1
            return httpx.Response(200, json=reading)
        problem = {"code": "not_found", "detail": f"no {request.url.path}"}
        return httpx.Response(404, json=problem, headers={"Content-Type": "application/json"})


def canned_client(readings: list[dict[str, Any]]) -> tuple[Client, Canned]:
    service = Canned(readings)
    return Client("http://service", transport=httpx.MockTransport(service)), service


def test_wait_polls_until_its_condition_and_raises_when_the_job_ends_without_it() -> None:
    steps = [job_json("queued", 0), job_json("running", 1), job_json("running", 3)]
    client, service = canned_client([*steps, job_json("cancelled", 3)])
    reached = client.wait(
        "j1", until=lambda j: j.progress is not None and j.progress.step >= 2,
        stream=False, poll_s=0.0,
    )  # fmt: skip
    assert (reached.status.value, service.reads) == ("running", 3)
    with pytest.raises(JobFailed) as caught:  # by default: succeeded, and it was cancelled
        client.wait("j1", stream=False, poll_s=0.0)
    assert caught.value.job.status.value == "cancelled"
    assert str(caught.value) == "job j1 cancelled"


def test_an_error_answer_is_an_api_error_and_the_stream_falls_back_to_polls() -> None:
    client, service = canned_client([job_json("succeeded", 4)])
    with pytest.raises(ApiError) as caught:
        client.models()
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    # No event stream here (404): wait reads the job instead.
    assert client.wait("j1", poll_s=0.0).status.value == "succeeded"
    assert service.reads == 1


def test_paths_and_event_streams_and_channel_ranges() -> None:
    assert path("unit_png", job_id="j1", index=3) == "/v1/jobs/j1/units/3.png"
    assert path("exemplar_grid", job_id="j", layer="a.b", channel=2) == (
        "/v1/jobs/j/exemplars/a.b/2"
    )
    lines = ["event: end", f"data: {json.dumps({'a': 1})}", "", ": heartbeat"]
    assert list(server_sent_events(iter(lines))) == [("end", '{"a": 1}'), ("", "")]
    assert parse_channels("0-2,7") == [0, 1, 2, 7]


@pytest.mark.skipif(SERVER, reason="the server is installed here: serve would start it")
def test_serve_says_the_server_is_missing_where_only_the_client_is_installed() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve"])
    assert "needs the server, which is not installed here" in str(caught.value.code)
