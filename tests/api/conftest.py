"""Fixtures for API tests: apps from explicit settings, served by a real uvicorn on 127.0.0.1.

``serve(app)`` runs uvicorn in a background thread on a free port, so tests talk HTTP to the
real server while still reaching the app's state (its pool, its registry) in-process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.main import create_app
from service.settings import Settings
from tests.models_files import toml_table

MAX_BODY_BYTES = 256 * 1024
MAX_IMAGE_PIXELS = 1_000_000
# Generous for 2 busy cores, short enough that a hang fails the test instead of the suite.
REQUEST_TIMEOUT = 30.0
# For clients that outlive a test: idle connections are dropped after 1 s, well before
# uvicorn closes them (5 s). With both at 5 s (httpx's default), a request sent as the server
# closed its idle connection failed with "Server disconnected without sending a response".
KEEP_ALIVE = httpx.Limits(keepalive_expiry=1.0)


def net_entry(
    name: str, factory: str, size: tuple[int, int], mean: float = 0.0, std: float = 1.0
) -> str:
    """The models-file entry ``name`` of the net ``factory`` of ``tests.api.nets``, random
    weights, at ``size`` (height, width), one grey channel normalised by ``mean`` and ``std``."""
    return toml_table(
        f"models.{name}",
        factory=f"tests.api.nets:{factory}",
        weights="random",
        input_size=size,
        channels=1,
        mean=[mean],
        std=[std],
    )


def one_by_one(name: str, side: int) -> str:
    """The models-file entry ``name`` of the hand-set 1×1 conv (``tests.api.nets``) at
    ``side`` px, one grey channel, unnormalised."""
    return net_entry(name, "one_by_one", (side, side))


MODELS_TOML = "".join(
    [
        one_by_one("tiny", 8) + 'description = "a 1×1 conv with hand-set weights"\n',
        net_entry("caffe", "caffe_names", (8, 8)),
        net_entry("heads", "heads", (12, 16), mean=0.5, std=0.25),
        net_entry("quadrant", "quadrant", (16, 16)) + 'labels = ["quadrant", "constant"]\n',
        net_entry("gated", "gated", (8, 8)),
    ]
)


def make_settings(models_file: Path, **overrides: object) -> Settings:
    """Settings for a test app: the test models, small limits, no Redis, no API keys."""
    values: dict[str, object] = {
        "models_file": models_file,
        "redis_url": None,
        "api_keys": None,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "sync_concurrency": 2,
        "sync_backlog": 16,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.toml"
    path.write_text(MODELS_TOML, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def app(models_file: Path) -> FastAPI:
    """The app under test: built-in ``shapes`` plus the tiny test models."""
    return create_app(make_settings(models_file))


@pytest.fixture(scope="session")
def base_url(app: FastAPI) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    """A client of the real server; every request times out rather than hang."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT, limits=KEEP_ALIVE) as client:
        yield client
