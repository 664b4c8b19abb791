"""Callbacks: a signed POST when a job ends, with bounded retries, to allowed hosts only;
with both transports, delivered by the API whatever ran the job, so a slow receiver never
holds a worker."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from tests.jobs.client import LONG, MODEL, QUICK, submit, wait_job
from tests.jobs.procs import CALLBACK_SECRET, wait_for
from tests.jobs.receiver import Delivery, Receiver, receiver


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as state:
        yield state


def verify(delivery: Delivery) -> dict[str, object]:
    """Check the signature as a receiver would (by the documented recipe); the body."""
    timestamp = delivery.headers["Cnnviz-Timestamp"]
    expected = hmac.new(
        CALLBACK_SECRET.encode(), timestamp.encode() + b"." + delivery.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(delivery.headers["Cnnviz-Signature"], f"sha256={expected}")
    body: dict[str, object] = json.loads(delivery.body)
    return body


def test_a_finished_job_posts_a_signed_callback_and_retries_a_failure(
    api: httpx.Client, hooks: Receiver
) -> None:
    hooks.answers["/done"] = [503, 200]  # the receiver is down once
    created = submit(api, {**QUICK, "seed": 51, "callback_url": hooks.url + "/done"})
    assert created["request"]["callback_url"] is None  # no part of the job's identity
    wait_job(api, created["id"])
    deliveries = wait_for(lambda: len(hooks.to("/done")) == 2 and hooks.to("/done"), 60, "2 tries")
    for delivery in deliveries:
        body = verify(delivery)
        assert body["id"] == created["id"]
        assert body["status"] == "succeeded"
        assert body["kind"] == "optimization"
        assert body["url"] == f"/v1/jobs/{created['id']}"
        assert delivery.headers["Cnnviz-Delivery"] == created["id"]
        assert delivery.headers["Cnnviz-Event"] == "job.finished"
    # The job is finished when the receiver hears of it.
    assert api.get(f"/v1/jobs/{created['id']}").json()["status"] == "succeeded"


def test_retries_are_bounded_and_a_refusal_is_final(api: httpx.Client, hooks: Receiver) -> None:
    hooks.answers.update({"/down": [500], "/gone": [410], "/last": [200]})
    for path in ("/down", "/gone", "/last"):
        submit(api, {**QUICK, "steps": 2, "callback_url": hooks.url + path})
    # CNNVIZ_CALLBACK_ATTEMPTS: 4, 0.5 + 1 + 2 s apart (no fifth: test_callback_outbox.py).
    wait_for(lambda: len(hooks.to("/down")) == 4 and hooks.to("/last"), 60, "the callbacks")
    assert len(hooks.to("/gone")) == 1


def test_a_slow_receiver_does_not_hold_what_runs_jobs(api: httpx.Client, hooks: Receiver) -> None:
    hooks.delays["/slow"] = 4.0  # under the 5 s timeout of a try: it succeeds, slowly
    first = submit(api, {**QUICK, "seed": 52, "callback_url": hooks.url + "/slow"})
    second = submit(api, {**QUICK, "seed": 53})  # waits for the one worker (or thread)
    ended = wait_job(api, first["id"])
    started = wait_job(api, second["id"])
    gap = datetime.fromisoformat(started["started_at"]) - datetime.fromisoformat(
        ended["finished_at"]
    )
    # Was 4 s and more: the pool child (or the executor's thread) waited for the answer.
    assert gap.total_seconds() < 2.0, gap
    wait_for(lambda: "/slow" in hooks.answered, 60, "the slow receiver's answer")
    (delivery,) = hooks.to("/slow")  # once: the try succeeded, none was made again
    assert verify(delivery)["id"] == first["id"]


def test_a_job_cancelled_before_it_ran_calls_back(api: httpx.Client, hooks: Receiver) -> None:
    running = submit(api, LONG)
    wait_job(api, running["id"], {"running"})
    queued = submit(api, {**QUICK, "callback_url": hooks.url + "/cancelled"})
    api.post(f"/v1/jobs/{queued['id']}/cancel")
    api.post(f"/v1/jobs/{running['id']}/cancel")
    delivery = wait_for(lambda: hooks.to("/cancelled"), 60, "the callback")[0]
    assert verify(delivery)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("url", "code", "named"),
    [
        ("http://example.com/hook", "callback_host_not_allowed", "'example.com'"),
        ("http://127.0.0.2:9/hook", "callback_host_not_allowed", "allowed hosts: 127.0.0.1"),
        ("ftp://127.0.0.1/hook", "invalid_callback_url", "ftp://127.0.0.1/hook"),
        ("not a url", "invalid_callback_url", "'not a url'"),
        ("http://127.0.0.1:99999/hook", "invalid_callback_url", "bad port"),
    ],
)
def test_a_callback_to_another_host_is_refused_before_queueing(
    api: httpx.Client, url: str, code: str, named: str
) -> None:
    answer = api.post(
        f"/v1/models/{MODEL}/optimizations",
        json={**QUICK, "callback_url": url},
        headers={"Cache-Control": "no-cache"},
    )
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["code"] == code
    assert named in problem["detail"]
    assert "Location" not in answer.headers
