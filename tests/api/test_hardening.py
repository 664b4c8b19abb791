"""Hostile and careless clients and operators: slow bodies, huge echoed names, empty keys."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import REQUEST_TIMEOUT, make_settings, serve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def impatient(models_file: Path) -> Iterator[str]:
    """A server that gives a request body one second to arrive."""
    with serve(create_app(make_settings(models_file, body_read_timeout=1.0))) as url:
        yield url


def _send_part_of_a_body(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=REQUEST_TIMEOUT)
    sock.sendall(
        b"POST /v1/models/tiny/feature-maps HTTP/1.1\r\nHost: test\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"layers": '
    )
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_that_trickles_in_gets_408_and_the_connection_closed(impatient: str) -> None:
    with _send_part_of_a_body(impatient) as sock:
        # The server answers and closes (recv returns b"" at the end) rather than wait forever.
        reply = _read_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"application/problem+json" in head.lower()
    assert b'"code":"body_timeout"' in body


def test_a_slow_client_does_not_hold_up_others(impatient: str) -> None:
    with _send_part_of_a_body(impatient) as sock:
        fast = httpx.get(f"{impatient}/v1/models", timeout=REQUEST_TIMEOUT)
        assert fast.status_code == 200
        assert _read_all(sock).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("keys", ["", "  ", ",", "k1,,k2", "k1, "])
def test_an_empty_api_key_is_refused_in_the_settings(keys: str) -> None:
    with pytest.raises(ValidationError, match="CNNVIZ_API_KEYS is set but has"):
        Settings(api_keys=keys)


def test_the_service_does_not_start_with_an_empty_api_key_variable() -> None:
    env = {**os.environ, "CNNVIZ_API_KEYS": " ", "PYTHONPATH": str(ROOT)}
    env.pop("CNNVIZ_REDIS_URL", None)
    started = subprocess.run(
        [sys.executable, "-c", "import service.main"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert "CNNVIZ_API_KEYS is set but has no key" in started.stderr


def test_a_huge_unknown_name_is_not_echoed_whole(http: httpx.Client) -> None:
    name = "m" * 60_000
    response = http.post(f"/v1/models/{name}/feature-maps", json={"sample": "star"})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert len(response.content) < 1000
    assert "(60000 characters)" in detail
    assert "shapes" in detail  # the valid choices are still named


def test_a_huge_unknown_field_is_not_echoed_whole(http: httpx.Client) -> None:
    body = {"sample": "star", "layers": ["conv"], "x" * 60_000: 1}
    response = http.post("/v1/models/tiny/feature-maps", json=body)
    assert response.status_code == 422
    assert len(response.content) < 2000
    assert "(60000 characters)" in response.json()["detail"]


def test_a_long_unknown_layer_is_cut_in_the_message(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/tiny/feature-maps", json={"sample": "star", "layers": ["L" * 250]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_layer"
    assert "L" * 100 not in response.json()["detail"]
    assert "(250 characters)" in response.json()["detail"]
