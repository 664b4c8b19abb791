"""Owners: with API keys, a job belongs to the key that created it. Any other key sees no such
job (404, never 403), and reuse, idempotency and quotas are per owner. Both transports."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.main import create_app
from tests.jobs.client import LONG, MODEL, QUICK, submit, wait_job
from tests.jobs.conftest import TRANSPORTS, api_settings
from tests.jobs.procs import CeleryWorker, serve

URL = f"/v1/models/{MODEL}/optimizations"
ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
QUOTA = 2


@pytest.fixture(params=TRANSPORTS)
def keyed(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The API with two keys and a quota of 2 active jobs per owner, on each transport."""
    redis_url = None
    if request.param == "celery":
        worker: CeleryWorker = request.getfixturevalue("shared_worker")
        redis_url = worker.redis_url
    settings = api_settings(
        redis_url, api_keys="alice-key,bob-key", max_active_jobs_per_owner=QUOTA
    )
    with serve(create_app(settings)) as client:
        yield client


def _as(client: httpx.Client, who: dict[str, str]) -> httpx.Client:
    client.headers.update(who)
    return client


def test_another_key_cannot_see_touch_or_learn_of_a_job(keyed: httpx.Client) -> None:
    alice = _as(keyed, ALICE)
    done = wait_job(alice, submit(alice, {**QUICK, "seed": 31})["id"])
    assert done["status"] == "succeeded"
    running = submit(alice, LONG)
    wait_job(alice, running["id"], {"running"})
    for job_id in (running["id"], done["id"]):
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/preview"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/jobs/{job_id}"),
        ]:
            response = keyed.request(method, path, headers=BOB)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["code"] == "unknown_job"
    # Bob's identical request runs his own job: nothing of Alice's is reused or named.
    bobs = keyed.post(URL, json={**QUICK, "seed": 31}, headers=BOB)
    assert bobs.status_code == 202
    assert "Cnnviz-Reused" not in bobs.headers
    assert bobs.json()["id"] != done["id"]
    # Alice's job is untouched by all of that, and hers to cancel.
    assert keyed.get(f"/v1/jobs/{running['id']}").json()["status"] == "running"
    assert keyed.post(f"/v1/jobs/{running['id']}/cancel").status_code == 202
    assert wait_job(keyed, running["id"])["status"] == "cancelled"
    _as(keyed, BOB)
    assert wait_job(keyed, bobs.json()["id"])["status"] == "succeeded"


def test_an_idempotency_key_is_per_owner(keyed: httpx.Client) -> None:
    same = {"Idempotency-Key": "order-66", "Cache-Control": "no-cache"}
    alice = keyed.post(URL, json=QUICK, headers={**same, **ALICE})
    bob = keyed.post(URL, json=QUICK, headers={**same, **BOB})
    again = keyed.post(URL, json=QUICK, headers={**same, **ALICE})
    assert alice.status_code == bob.status_code == 202
    assert alice.json()["id"] != bob.json()["id"]
    assert again.json()["id"] == alice.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    for who, job_id in ((ALICE, alice.json()["id"]), (BOB, bob.json()["id"])):
        assert wait_job(_as(keyed, who), job_id)["status"] == "succeeded"


def test_an_owner_at_its_quota_gets_429_and_others_do_not(keyed: httpx.Client) -> None:
    alice = _as(keyed, ALICE)
    held = [submit(alice, {**LONG, "seed": seed}) for seed in range(QUOTA)]
    refused = alice.post(URL, json=QUICK, headers={"Cache-Control": "no-cache"})
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "10"
    assert refused.json()["code"] == "quota_exceeded"
    assert f"you have {QUOTA} jobs queued or running" in refused.json()["detail"]
    # Bob is not held up by Alice's jobs being counted.
    bob = keyed.post(URL, json=QUICK, headers={**BOB, "Cache-Control": "no-cache"})
    assert bob.status_code == 202, bob.text
    # One of Alice's jobs ends: she may submit again.
    assert alice.post(f"/v1/jobs/{held[0]['id']}/cancel").status_code == 202
    wait_job(alice, held[0]["id"])
    again = alice.post(URL, json=QUICK, headers={"Cache-Control": "no-cache"})
    assert again.status_code == 202, again.text
    # Queued (200: cancelled at once) or just taken by the freed worker (202): either way it ends.
    assert alice.post(f"/v1/jobs/{held[1]['id']}/cancel").status_code in (200, 202)
    for job_id in (held[1]["id"], again.json()["id"]):
        wait_job(alice, job_id, timeout=120)
    assert wait_job(_as(keyed, BOB), bob.json()["id"], timeout=120)["status"] == "succeeded"


def test_each_key_lists_its_own_jobs_newest_first_in_pages(keyed: httpx.Client) -> None:
    alice = []
    for i in range(3):  # one at a time: the quota is 2 active jobs
        alice.append(submit(keyed, {**QUICK, "seed": 600 + i}, ALICE)["id"])
        wait_job(_as(keyed, ALICE), alice[-1])
    bobs = submit(keyed, {**QUICK, "seed": 650}, BOB)["id"]
    first = keyed.get("/v1/jobs", params={"page_size": 2}, headers=ALICE).json()
    assert [j["id"] for j in first["jobs"]] == alice[::-1][:2]  # newest first
    assert all(j["result"] is None for j in first["jobs"])  # results are read one by one
    token = first["next_page_token"]
    assert token
    second = keyed.get("/v1/jobs", params={"page_size": 2, "page_token": token}, headers=ALICE)
    listed = second.json()
    # Alice's earlier jobs of this run (other tests) may follow; Bob's never do.
    assert listed["jobs"][0]["id"] == alice[0]
    seen = keyed.get("/v1/jobs", params={"page_size": 100}, headers=ALICE).json()["jobs"]
    assert bobs not in [j["id"] for j in seen]
    assert keyed.get("/v1/jobs", headers=BOB).json()["jobs"][0]["id"] == bobs
    done = keyed.get("/v1/jobs", params={"status": "succeeded", "kind": "optimization"})
    assert done.status_code == 200 and all(j["status"] == "succeeded" for j in done.json()["jobs"])
    bad = keyed.get("/v1/jobs", params={"page_token": "not-a-token"}, headers=ALICE)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_page_token"
    assert keyed.get("/v1/jobs", params={"status": "lost"}, headers=ALICE).status_code == 422
