"""A full torch pool answers 503 with Retry-After at once, and recovers when a slot frees.

Deterministic: the pool has one slot and no backlog, and the slot is held by a request whose
forward pass waits at a gate that the test opens (``tests.api.nets.GATE``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from tests.api import nets
from tests.api.conftest import REQUEST_TIMEOUT, make_settings, serve

REQUEST = {"sample": "circle", "layers": ["conv"]}


@pytest.fixture(scope="module")
def one_slot(models_file: Path) -> Iterator[str]:
    app = create_app(make_settings(models_file, sync_concurrency=1, sync_backlog=0))
    with serve(app) as url:
        yield url


@contextmanager
def slot_held(url: str, executor: concurrent.futures.ThreadPoolExecutor) -> Iterator[None]:
    """The pool's one slot held, for the ``with`` block, by a request waiting at the gate;
    then the gate opens and that request succeeds."""
    nets.GATE.clear()
    nets.ENTERED.clear()
    held = executor.submit(
        httpx.post, f"{url}/v1/models/gated/feature-maps", json=REQUEST, timeout=60
    )
    try:
        assert nets.ENTERED.wait(timeout=REQUEST_TIMEOUT), "the gated request never ran"
        yield
    finally:
        nets.GATE.set()
    assert held.result(timeout=REQUEST_TIMEOUT).status_code == 200


def test_a_full_pool_answers_503_with_retry_after(one_slot: str) -> None:
    with (
        httpx.Client(base_url=one_slot, timeout=REQUEST_TIMEOUT) as client,
        concurrent.futures.ThreadPoolExecutor(1) as executor,
    ):
        with slot_held(one_slot, executor):
            busy = client.post("/v1/models/tiny/feature-maps", json=REQUEST)
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert busy.headers["content-type"] == "application/problem+json"
            assert busy.json()["code"] == "busy"
        # The slot is free again.
        assert client.post("/v1/models/tiny/feature-maps", json=REQUEST).status_code == 200


def test_readiness_answers_while_every_torch_slot_is_taken(one_slot: str) -> None:
    # A load balancer's poll must not compete with the work: /readyz reads state only.
    with (
        httpx.Client(base_url=one_slot, timeout=REQUEST_TIMEOUT) as client,
        concurrent.futures.ThreadPoolExecutor(9) as executor,
        slot_held(one_slot, executor),
    ):
        polls = list(executor.map(lambda _: client.get("/readyz"), range(8)))
        assert [p.status_code for p in polls] == [200] * 8
        assert polls[0].json()["checks"]["models"]["ok"] is True
