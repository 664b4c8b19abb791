"""Metrics, request ids, logs and CORS, over real HTTP."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.cors import EXPOSED_HEADERS
from service.main import create_app
from service.observability import configure_logging
from tests.api.conftest import REQUEST_TIMEOUT, make_settings, serve


def samples(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_count_requests_by_route_and_status(http: httpx.Client) -> None:
    before = samples(http)
    key = (
        "http_requests_total",
        frozenset(
            {"handler": "/v1/models/{model}/layers", "method": "GET", "status": "404"}.items()
        ),
    )
    assert http.get("/v1/models/nope/layers").status_code == 404
    assert http.get("/v1/models/nope/layers").status_code == 404
    after = samples(http)
    assert after[key] - before.get(key, 0.0) == 2
    latency = (
        "http_request_duration_seconds_count",
        frozenset({"handler": "/v1/models/{model}/layers", "method": "GET"}.items()),
    )
    assert after[latency] >= 2
    pool = {name: value for (name, _), value in after.items() if name.startswith("cnnviz_torch")}
    assert pool["cnnviz_torch_pool_capacity"] == 18  # 2 running + 16 waiting (test settings)
    assert pool["cnnviz_torch_pool_in_use"] == 0


def test_a_full_torch_pool_is_counted(app: FastAPI, http: httpx.Client) -> None:
    pool = app.state.pool
    key = (
        "cnnviz_busy_rejections_total",
        frozenset({"handler": "/v1/models/{model}/layers"}.items()),
    )
    before = samples(http).get(key, 0.0)
    admitted, pool._admitted = pool._admitted, pool.capacity  # full, as under load
    try:
        assert samples(http)[("cnnviz_torch_pool_in_use", frozenset())] == pool.capacity
        response = http.get("/v1/models/shapes/layers")
    finally:
        pool._admitted = admitted
    assert response.status_code == 503
    assert response.json()["code"] == "busy"
    assert samples(http)[key] - before == 1


def test_a_request_id_comes_back_and_a_bad_one_is_replaced(http: httpx.Client) -> None:
    given = http.get("/healthz", headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["X-Request-ID"] == "trace-42.a"
    made = http.get("/healthz")
    assert len(made.headers["X-Request-ID"]) == 32
    hostile = http.get("/healthz", headers={"X-Request-ID": "x" * 300})
    assert hostile.headers["X-Request-ID"] != "x" * 300
    # An error answer has one too.
    assert http.get("/v1/models/nope/layers").headers["X-Request-ID"]


def test_json_logs_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    try:
        from asgi_correlation_id import correlation_id

        token = correlation_id.set("req-7")
        logging.getLogger("cnnviz.test").warning("model %r is unavailable", "r18")
        correlation_id.reset(token)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["request_id"] == "req-7"
        assert record["message"] == "model 'r18' is unavailable"
        assert record["level"] == "WARNING"
    finally:
        configure_logging("plain", "INFO")


def test_cors_exposes_the_headers_a_browser_client_needs(models_file: Path) -> None:
    app = create_app(make_settings(models_file, cors_origins="https://app.example"))
    with serve(app) as url, httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as http:
        origin = {"Origin": "https://app.example"}
        png = http.post(
            "/v1/models/shapes/feature-maps",
            json={"sample": "triangle", "layers": ["block1.conv"]},
            headers={**origin, "Accept": "image/png"},
        )
        assert png.status_code == 200
        assert png.headers["access-control-allow-origin"] == "https://app.example"
        exposed = {
            h.strip().lower() for h in png.headers["access-control-expose-headers"].split(",")
        }
        custom = {h.lower() for h in png.headers if h.lower().startswith(("x-grid", "x-layer"))}
        assert custom and custom <= exposed
        assert {"location", "retry-after"} <= exposed == {h.lower() for h in EXPOSED_HEADERS}
        other = http.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_metrics_name_unmatched_paths_none_and_leave_out_metrics_itself(
    http: httpx.Client,
) -> None:
    before = samples(http)
    assert http.get("/no/such/path").status_code == 404
    after = samples(http)
    key = (
        "http_requests_total",
        frozenset({"handler": "none", "method": "GET", "status": "404"}.items()),
    )
    assert after[key] - before.get(key, 0.0) == 1
    # /metrics itself is not counted, and it is gzipped for a scraper that asks.
    assert not any(labels and dict(labels).get("handler") == "/metrics" for _, labels in after)
    zipped = http.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "http_requests_total" in zipped.text


def test_a_request_that_raises_is_counted_as_the_500_it_answers(models_file: Path) -> None:
    app = create_app(make_settings(models_file))

    def broken() -> None:
        raise RuntimeError("a bug in a handler")

    app.add_api_route("/v1/broken/{thing}", broken)
    with serve(app) as url:
        # The server closes the connection after an exception: a new one reads the metrics.
        assert httpx.get(f"{url}/v1/broken/x", timeout=REQUEST_TIMEOUT).status_code == 500
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            counted = samples(client)
    key = (
        "http_requests_total",
        frozenset({"handler": "/v1/broken/{thing}", "method": "GET", "status": "500"}.items()),
    )
    assert counted[key] == 1
