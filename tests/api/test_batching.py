"""Micro-batching of the synchronous forward passes: concurrent requests share one, and each
gets exactly what its own forward pass gives."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
import torchvision

from cnnviz.data.shapes import sample_image
from cnnviz.featuremaps import layer_activations
from cnnviz.models.shapes import load_shapes_net
from cnnviz.threads import CoreShare
from service import batching
from service.batching import MicroBatcher
from service.main import create_app
from tests.api.conftest import REQUEST_TIMEOUT, make_settings, serve

Outputs = dict[str, torch.Tensor]
WAIT_S = 60.0


def _concurrently(
    batcher: MicroBatcher,
    key: object,
    inputs: list[torch.Tensor],
    run: Callable,
    cores: int = 2,
) -> list[Outputs]:
    """Every input through ``batcher.forward`` from its own thread, all arriving together:
    each thread is on its way (decoding) until all are, so the leader waits for all. Each
    thread holds a claim of ``cores`` shared among them."""
    barrier = threading.Barrier(len(inputs))
    share_claims = CoreShare(cores)

    def one(x: torch.Tensor) -> Outputs:
        with share_claims.claim():
            with batcher.arriving():
                barrier.wait(timeout=30)
            return batcher.forward(key, x, run)

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(one, inputs))


def _batcher() -> MicroBatcher:
    # A long delay: the leader stops waiting when nobody is on the way, not on a timer.
    return MicroBatcher(CoreShare(2), max_batch=8, max_delay_s=10.0)


def test_concurrent_requests_run_as_one_batch_with_their_own_rows() -> None:
    calls: list[int] = []

    def run(batch: torch.Tensor) -> Outputs:
        calls.append(batch.shape[0])
        time.sleep(0.5)  # a slow forward: waiting for the others is worth it
        return {"double": batch * 2, "sum": batch.sum(dim=(1, 2, 3))}

    batcher = _batcher()
    inputs = [torch.full((1, 3, 4, 4), float(i)) for i in range(5)]
    outputs = _concurrently(batcher, "k", inputs, run)
    for i, out in enumerate(outputs):
        assert torch.equal(out["double"], inputs[i] * 2)
        assert out["sum"].tolist() == [i * 48.0]
    # One batch of 5, checked once against each image alone; then batches of 5 are trusted.
    assert calls == [5, 1, 1, 1, 1, 1] and batcher.batches == 1
    _concurrently(batcher, "k", inputs, run)
    assert calls[6:] == [5]


def test_a_batch_that_changes_the_numbers_is_not_used() -> None:
    def run(batch: torch.Tensor) -> Outputs:  # results depend on the batch size
        return {"a": batch + 0.001 * batch.shape[0]}

    batcher = _batcher()
    inputs = [torch.full((1, 2), float(i)) for i in range(3)]
    for _ in range(2):
        outputs = _concurrently(batcher, "k", inputs, run)
        for x, out in zip(inputs, outputs, strict=True):
            assert torch.equal(out["a"], run(x)["a"])  # what it gives alone


def test_a_quick_forward_does_not_wait_long_for_others() -> None:
    # A forward of a few milliseconds: a leader waits at most half of that for others, not
    # the hour allowed, even while a request stays on its way.
    batcher = MicroBatcher(CoreShare(2), max_batch=8, max_delay_s=3600.0)

    def run(batch: torch.Tensor) -> Outputs:
        time.sleep(0.005)
        return {"a": batch + 1}

    x = torch.ones(1, 3)
    batcher.forward("k", x, run)  # learns what one forward costs
    arrived = threading.Event()
    done = threading.Event()

    def on_its_way() -> None:
        with batcher.arriving():
            arrived.set()
            done.wait(timeout=60)

    waiter = threading.Thread(target=on_its_way)
    waiter.start()
    try:
        assert arrived.wait(timeout=10)
        result: list[Outputs] = []
        leader = threading.Thread(target=lambda: result.append(batcher.forward("k", x, run)))
        leader.start()
        leader.join(timeout=30)
        assert result and torch.equal(result[0]["a"], x + 1)  # it did not wait for the other
    finally:
        done.set()
        waiter.join(timeout=10)


def test_no_wait_for_others_when_batches_of_the_key_change_the_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Batches of this key give other numbers than each image alone (as a small convolution
    # network's do), so its requests run one by one anyway: a leader does not wait for a
    # request on its way, however slow its forward seems (a clock that makes every forward
    # look 1000 s long, so that only this rule can end the wait before the other arrives).
    ticks = iter(range(0, 10**9, 1000))
    clock = SimpleNamespace(monotonic=time.monotonic, perf_counter=lambda: next(ticks))
    monkeypatch.setattr(batching, "time", clock)
    batcher = MicroBatcher(CoreShare(2), max_batch=2, max_delay_s=3600.0)

    def run(batch: torch.Tensor) -> Outputs:
        return {"a": batch + 0.001 * batch.shape[0]}

    _concurrently(batcher, "k", [torch.zeros(1, 2), torch.ones(1, 2)], run)  # learns it
    leader_done = threading.Event()
    waited_for_leader: list[bool] = []

    def on_its_way() -> None:  # stays on its way until the leader is done
        with batcher.arriving():
            waited_for_leader.append(leader_done.wait(timeout=WAIT_S))

    waiter = threading.Thread(target=on_its_way)
    waiter.start()
    try:
        x = torch.ones(1, 2)
        assert torch.equal(batcher.forward("k", x, run)["a"], run(x)["a"])
        leader_done.set()
    finally:
        leader_done.set()
        waiter.join(timeout=10)
    assert waited_for_leader == [True]  # the leader did not wait for it


def test_a_lone_request_does_not_wait() -> None:
    batcher = MicroBatcher(CoreShare(2), max_batch=8, max_delay_s=3600.0)
    x = torch.ones(1, 3)
    assert torch.equal(batcher.forward("k", x, lambda b: {"a": b + 1})["a"], x + 1)


def test_an_error_reaches_every_request_of_the_batch() -> None:
    def run(batch: torch.Tensor) -> Outputs:
        raise ValueError("broken forward")

    batcher = _batcher()
    with pytest.raises(ValueError, match="broken forward"):
        _concurrently(batcher, "k", [torch.zeros(1, 1)] * 3, run)


@pytest.mark.parametrize("name", ["shapes", "resnet18"])
def test_real_models_batched_equal_alone(name: str) -> None:
    if name == "shapes":
        model, size, layers = load_shapes_net(), 64, ["block1.conv", "block3.relu", "fc"]
    else:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        size, layers = 96, ["layer1", "layer2", "fc"]
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, size, size) for _ in range(4)]

    def run(batch: torch.Tensor) -> Outputs:
        return layer_activations(model, batch, layers)

    # One thread on both sides: oneDNN's numbers for an image can depend on the thread count
    # (they do for resnet18 on an Intel Xeon of family 6 model 207), and "alone" means alone
    # with the same threads.
    outputs = _concurrently(_batcher(), name, inputs, run, cores=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, out in zip(inputs, outputs, strict=True):
            alone = run(x)
            assert all(torch.equal(out[k], alone[k]) for k in layers)
    finally:
        torch.set_num_threads(threads)


def test_responses_batched_equal_the_unbatched_service(models_file: Path) -> None:
    """The same requests, 6 at once to a batching app and one by one to an app that never
    batches: identical answers, stats and PNGs alike."""
    buffer = io.BytesIO()
    sample_image("triangle").save(buffer, format="PNG")
    triangle_png = buffer.getvalue()
    body = {"layers": ["block1.conv", "block3.relu"]}
    colours = ["viridis", "magma", "gray", "viridis", "inferno", "cividis"]

    def ask(client: httpx.Client, colormap: str) -> bytes:
        files = {"image": ("t.png", triangle_png, "image/png")}
        response = client.post(
            "/v1/models/shapes/feature-maps", files=files, data={**body, "colormap": colormap}
        )
        assert response.status_code == 200, response.text
        return response.content

    answers = {}
    for batch_max in (1, 8):
        app = create_app(make_settings(models_file, sync_concurrency=6, sync_batch_max=batch_max))
        with serve(app) as url, httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            if batch_max == 1:
                answers[1] = [ask(client, c) for c in colours]
            else:
                with ThreadPoolExecutor(len(colours)) as pool:
                    answers[8] = list(pool.map(lambda c: ask(client, c), colours))
    assert answers[8] == answers[1]
