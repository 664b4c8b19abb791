"""Liveness and readiness of the embedded defaults (in-process jobs, no Redis)."""

from __future__ import annotations

import httpx


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
