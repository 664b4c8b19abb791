"""The job API, the same with both transports: in-process, and Celery with a real worker."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from cnnviz.precision import resolve_precision
from service.main import create_app
from tests.jobs.client import LONG, MODEL, QUICK, decode_png, job, submit, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve, wait_for


def test_a_job_runs_to_a_result_that_beats_its_starting_noise(api: httpx.Client) -> None:
    created = submit(api, {**QUICK, "seed": 7})
    assert created["status"] == "queued"
    assert created["request"]["channels"] == [0, 5]
    assert created["request"]["image_size"] == 32

    done = wait_job(api, created["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    assert done["progress"]["step"] == done["progress"]["total"] == 24
    result = done["result"]
    assert [unit["channel"] for unit in result["units"]] == [0, 5]
    assert result["seed"] == 7
    assert result["settings"]["steps"] == 24
    # The default precision is "auto", resolved on the worker's device (the CPU here).
    assert result["settings"]["precision"] == "auto"
    assert result["precision"] == resolve_precision("auto", "cpu").precision
    for unit in result["units"]:
        assert decode_png(unit["image"]).size == (32, 32)
        # A ReLU channel's mean: noise barely excites it, the optimized image many times more.
        assert unit["objective"] > max(5 * unit["initial_objective"], 0.1), unit
    grid = decode_png(result["grid"])
    assert grid.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # two tiles, 2 px padding
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]


def test_unfinished_jobs_say_when_to_ask_again(api: httpx.Client) -> None:
    created = submit(api, LONG)
    running = api.get(f"/v1/jobs/{created['id']}")
    assert running.headers["Retry-After"] == "1"
    api.post(f"/v1/jobs/{created['id']}/cancel")
    stopped = wait_job(api, created["id"])
    assert "Retry-After" not in api.get(f"/v1/jobs/{created['id']}").headers
    assert stopped["status"] == "cancelled"


def test_a_running_job_shows_progress_and_a_preview(api: httpx.Client) -> None:
    created = submit(api, LONG)
    running = wait_job(api, created["id"], {"running"}, step=5)
    assert running["progress"]["total"] == 4096
    assert len(running["progress"]["objectives"]) == 1

    def preview() -> bytes | None:
        response = api.get(f"/v1/jobs/{created['id']}/preview")
        return response.content if response.status_code == 200 else None

    png = wait_for(preview, 30, "a preview")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (64 + 4, 64 + 4)


def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(api: httpx.Client) -> None:
    running = submit(api, LONG)
    wait_job(api, running["id"], {"running"}, step=2)
    queued = submit(api, LONG)  # one worker: this one waits
    assert job(api, queued["id"])["status"] == "queued"

    response = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"

    response = api.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    stopped = wait_job(api, running["id"], timeout=15)
    assert stopped["status"] == "cancelled"
    assert stopped["progress"]["step"] < 4096

    # The worker is free again, and the cancelled queued job never ran.
    after = submit(api, QUICK)
    assert wait_job(api, after["id"])["status"] == "succeeded"
    never = job(api, queued["id"])
    assert never["status"] == "cancelled"
    assert never["attempts"] == 0
    assert never["started_at"] is None


def test_the_same_idempotency_key_and_body_give_the_same_job(api: httpx.Client) -> None:
    first = submit(api, QUICK, headers={"Idempotency-Key": "order-66"})
    again = api.post(
        f"/v1/models/{MODEL}/optimizations", json=QUICK, headers={"Idempotency-Key": "order-66"}
    )
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    assert again.headers["Idempotent-Replayed"] == "true"

    other = api.post(
        f"/v1/models/{MODEL}/optimizations",
        json={**QUICK, "seed": 1},
        headers={"Idempotency-Key": "order-66"},
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    wait_job(api, first["id"])


def test_delete_forgets_a_finished_job_and_refuses_a_running_one(api: httpx.Client) -> None:
    running = submit(api, LONG)
    response = api.delete(f"/v1/jobs/{running['id']}")
    assert response.status_code == 409
    assert response.json()["code"] == "job_not_finished"
    api.post(f"/v1/jobs/{running['id']}/cancel")
    wait_job(api, running["id"])

    assert api.delete(f"/v1/jobs/{running['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{running['id']}").status_code == 404


def test_a_finished_job_cannot_be_cancelled(api: httpx.Client) -> None:
    done = wait_job(api, submit(api, QUICK)["id"])
    response = api.post(f"/v1/jobs/{done['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["code"] == "job_finished"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("DELETE", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/preview"),
    ],
)
def test_an_unknown_job_is_a_404(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path.format(id="0123456789abcdef"))
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_job"


@pytest.mark.parametrize(
    "model, body, status, code, names",
    [
        ("nope", QUICK, 404, "unknown_model", "nope"),
        (MODEL, {**QUICK, "layer": "block9.relu"}, 422, "unknown_layer", "block9.relu"),
        (MODEL, {**QUICK, "channels": [0, 999]}, 422, "invalid_argument", "999"),
        (MODEL, {**QUICK, "steps": 0}, 422, "invalid_request", "steps"),
        (MODEL, {**QUICK, "steps": 100_000}, 422, "invalid_request", "steps"),
        (MODEL, {**QUICK, "image_size": 4}, 422, "invalid_request", "image_size"),
        (MODEL, {**QUICK, "lr": -1}, 422, "invalid_request", "lr"),
        (MODEL, {**QUICK, "colour": "red"}, 422, "invalid_request", "colour"),
        (MODEL, {**QUICK, "precision": "fp8"}, 422, "invalid_request", "'bf16'"),
        (MODEL, {**QUICK, "objective": "neuron"}, 422, "invalid_request", "neuron"),
        (
            MODEL,
            {"layer": "block4.relu", "channels": "all", "images_per_unit": 8},
            422,
            "invalid_argument",
            "512 units",
        ),
        (
            MODEL,
            {"layer": "block2.relu", "neuron": {"channel": 1, "y": 999}},
            422,
            "invalid_argument",
            "y=999",
        ),
    ],
)
def test_a_bad_request_is_refused_before_it_is_queued(
    api: httpx.Client, model: str, body: dict[str, object], status: int, code: str, names: str
) -> None:
    response = api.post(f"/v1/models/{model}/optimizations", json=body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code
    assert names in problem["detail"]


@pytest.mark.parametrize("path", ["optimizations", "exemplars", "dissections"])
def test_a_body_that_is_not_json_is_a_415_on_every_job_route(api: httpx.Client, path: str) -> None:
    url = f"/v1/models/{MODEL}/{path}"
    sent = [
        api.post(url, content=b'{"layer": "block2.relu"}', headers={"Content-Type": "text/plain"}),
        api.post(url, data={"layer": "block2.relu"}),  # a form
        api.post(url, content=b'{"layer": "block2.relu"}'),  # no content type
    ]
    for response in sent:
        assert response.status_code == 415, response.text
        assert response.json()["code"] == "unsupported_media_type"
        assert "application/json" in response.json()["detail"]
    # JSON with a charset, or a +json type, is read as JSON: a field error, not a 415.
    charset = {"Content-Type": "application/json; charset=utf-8"}
    typed = api.post(url, content=b"{}", headers=charset)
    assert typed.status_code == 422, typed.text
    vendor = api.post(url, content=b"{}", headers={"Content-Type": "application/problem+json"})
    assert vendor.status_code == 422, vendor.text


def test_other_objectives_run(api: httpx.Client) -> None:
    layers = api.get(f"/v1/models/{MODEL}/layers").json()["layers"]
    width = next(layer["shape"][0] for layer in layers if layer["name"] == "block1.relu")
    bodies = [
        {"layer": "block2.relu", "neuron": {"channel": 3}, "steps": 12, "image_size": 32},
        {"layer": "block2.relu", "objective": "layer", "steps": 12, "image_size": 32},
        {"layer": "fc", "objective": "class_logit", "channels": [0, 1], "steps": 12},
        {
            "layer": "block1.relu",
            "objective": "direction",
            "direction": [1.0] * width,
            "steps": 12,
            "image_size": 32,
        },
    ]
    jobs = [submit(api, body) for body in bodies]
    units = [len(wait_job(api, j["id"])["result"]["units"]) for j in jobs]
    assert units == [1, 1, 2, 1]


def test_idempotency_keys_are_scoped_by_api_key() -> None:
    settings = api_settings(None, api_keys="alice-key,bob-key")
    with serve(create_app(settings)) as client:
        url = f"/v1/models/{MODEL}/optimizations"
        same_key = {"Idempotency-Key": "order-66"}
        alice = client.post(url, json=QUICK, headers={**same_key, "X-API-Key": "alice-key"})
        bob = client.post(url, json=QUICK, headers={**same_key, "X-API-Key": "bob-key"})
        assert alice.status_code == bob.status_code == 202
        assert alice.json()["id"] != bob.json()["id"]
        assert "Idempotent-Replayed" not in bob.headers
        nobody = client.post(url, json=QUICK, headers=same_key)
        assert nobody.status_code == 401
        # Each job is its owner's to read (tests/jobs/test_owners.py).
        for key, job_id in (("alice-key", alice.json()["id"]), ("bob-key", bob.json()["id"])):
            client.headers["X-API-Key"] = key
            wait_job(client, job_id)


def test_an_identical_request_is_served_from_the_succeeded_job(api: httpx.Client) -> None:
    body = {**QUICK, "seed": 4242}
    first = wait_job(api, submit(api, body)["id"])
    assert first["status"] == "succeeded"
    url = f"/v1/models/{MODEL}/optimizations"

    again = api.post(url, json=body)
    assert again.status_code == 200
    assert again.headers["Cnnviz-Reused"] == "true"
    assert again.headers["Location"] == f"/v1/jobs/{first['id']}"
    assert again.json()["id"] == first["id"]
    assert again.json()["result"] == first["result"]

    fresh = api.post(url, json=body, headers={"Cache-Control": "no-cache"})
    other_seed = api.post(url, json={**body, "seed": 4243})
    assert fresh.status_code == other_seed.status_code == 202
    assert len({first["id"], fresh.json()["id"], other_seed.json()["id"]}) == 3
    for response in (fresh, other_seed):
        wait_job(api, response.json()["id"])
    # The deleted job is not served again: the request runs anew.
    for job_id in (first["id"], fresh.json()["id"]):
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    anew = api.post(url, json=body)
    assert anew.status_code == 202
    wait_job(api, anew.json()["id"])


def test_a_full_in_process_queue_answers_503_busy() -> None:
    with serve(create_app(api_settings(None, inprocess_job_backlog=0))) as client:
        running = submit(client, LONG)
        refused = client.post(
            f"/v1/models/{MODEL}/optimizations", json=QUICK, headers={"Cache-Control": "no-cache"}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "busy"
        assert refused.headers["Retry-After"] == "5"
        assert "queue is full" in refused.json()["detail"]
        client.post(f"/v1/jobs/{running['id']}/cancel")
        assert wait_job(client, running["id"])["status"] == "cancelled"


def test_an_in_process_job_past_its_time_limit_fails_with_a_timeout() -> None:
    # Long enough for QUICK on busy cores, far too short for LONG.
    with serve(create_app(api_settings(None, job_soft_time_limit=4.0))) as client:
        job_id = submit(client, LONG)["id"]
        failed = wait_job(client, job_id)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "timeout"
        # The executor lives on: the next job runs.
        assert wait_job(client, submit(client, QUICK)["id"])["status"] == "succeeded"


def test_an_in_process_job_yields_the_cores_to_feature_maps() -> None:
    app = create_app(api_settings(None))
    cores = app.state.pool.cores
    with serve(app) as client:
        running = submit(client, LONG)
        wait_job(client, running["id"], {"running"})
        # The job's claim is background work in the one share of the API process: a
        # feature-map request beside it has every core, and the job one thread meanwhile.
        wait_for(lambda: cores.running_background == 1, 30, "the job's claim")
        assert cores.running == 0
        with cores.claim() as claim:
            assert claim.threads == cores.cores
            assert cores.threads_now(background=True) == 1
        assert cores.threads_now(background=True) == cores.cores  # alone again: every core
        client.post(f"/v1/jobs/{running['id']}/cancel")
        assert wait_job(client, running["id"])["status"] == "cancelled"
        wait_for(lambda: cores.running_background == 0, 30, "the claim given back")
