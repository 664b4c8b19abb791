"""A job's Server-Sent Events over real HTTP, the same with both transports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cnnviz_client.waiting import server_sent_events
from service.main import create_app
from tests.jobs.client import LONG, QUICK, settle, submit
from tests.jobs.conftest import TRANSPORTS, api_settings
from tests.jobs.procs import RedisServer, serve


def read_events(api: httpx.Client, job_id: str, timeout: float = 60) -> list[tuple[str, Any]]:
    """Every event and comment of the stream until the server ends it: (name, data)."""
    events: list[tuple[str, Any]] = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        for name, data in server_sent_events(response.iter_lines()):
            events.append(("comment", None) if not name else (name, json.loads(data)))
    return events


def test_events_show_progress_then_the_final_state_then_end(api: httpx.Client) -> None:
    # Long enough that the stream opens while it runs: a 48-step job on a warm, idle worker
    # once ended before the GET arrived, and its stream was only "end".
    created = submit(api, {**QUICK, "steps": 320, "seed": 31})
    events = read_events(api, created["id"])
    names = [name for name, _ in events]
    assert names[-1] == "end"
    assert "progress" in names
    assert set(names) <= {"progress", "end", "comment"}
    steps = [
        data["progress"]["step"] for name, data in events if name == "progress" and data["progress"]
    ]
    assert steps == sorted(steps)
    final = events[-1][1]
    assert final["id"] == created["id"]
    assert final["status"] == "succeeded"
    assert final["progress"]["step"] == 320
    assert final["result"]["grid_url"] == f"/v1/jobs/{created['id']}/result.png"
    assert final["result"]["grid"] is None  # the stream stays small; the file is a URL away
    # A finished job's stream is its final state at once.
    assert [name for name, _ in read_events(api, created["id"])] == ["end"]


def test_a_cancelled_job_ends_its_stream(api: httpx.Client) -> None:
    created = submit(api, LONG)
    with api.stream("GET", f"/v1/jobs/{created['id']}/events", timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: progress"):
                break
        assert api.post(f"/v1/jobs/{created['id']}/cancel").status_code in (200, 202)
        rest = list(lines)
    end = rest.index("event: end")
    assert json.loads(rest[end + 1].partition(":")[2])["status"] == "cancelled"


def test_an_unknown_job_has_no_stream(api: httpx.Client) -> None:
    answer = api.get("/v1/jobs/nope/events")
    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_job"


@pytest.fixture(params=TRANSPORTS)
def short_streams(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """An API whose streams beat every 0.1 s and last 1.5 s, on each transport; with Celery,
    a Redis of its own and no worker, so that a job stays queued and its stream quiet."""
    redis_url = None
    if request.param == "celery":
        redis: RedisServer = request.getfixturevalue("fresh_redis")
        redis_url = redis.url
    settings = api_settings(
        redis_url,
        events_heartbeat_interval=0.1,
        events_max_seconds=1.5,
        job_progress_interval=30,  # in-process: no progress after the first, a quiet stream
    )
    with serve(create_app(settings)) as client:
        yield client
        settle(client)


def test_a_quiet_stream_beats_and_ends_after_its_lifetime(short_streams: httpx.Client) -> None:
    created = submit(short_streams, LONG)
    events = read_events(short_streams, created["id"], timeout=30)
    names = [name for name, _ in events]
    assert names.count("comment") >= 3, names
    assert names[-1] == "expired"
    assert events[-1][1] == {"id": created["id"], "after_s": 1.5}
    assert "end" not in names
