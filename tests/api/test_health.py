"""Liveness and readiness of the embedded defaults (in-process jobs, no Redis)."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.main import create_app
from tests.api.conftest import REQUEST_TIMEOUT, make_settings, serve


def test_alive(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}


def test_ready_with_the_builtin_model_and_in_process_jobs(http: httpx.Client) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["models"]["ok"] is True
    jobs = body["checks"]["jobs"]
    assert jobs["ok"] is True and jobs["transport"] == "in-process"


def test_readiness_details_need_a_key(models_file: Path) -> None:
    app = create_app(make_settings(models_file, api_keys="k1,k2"))
    with serve(app) as url, httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        anonymous = client.get("/readyz")
        assert anonymous.status_code == 200
        assert anonymous.json() == {"status": "ready"}
        wrong = client.get("/readyz", headers={"X-API-Key": "k3"})
        assert wrong.json() == {"status": "ready"}
        keyed = client.get("/readyz", headers={"X-API-Key": "k2"})
        assert keyed.json()["status"] == "ready"
        assert keyed.json()["checks"]["jobs"]["transport"] == "in-process"
