"""Tracing a model in one thread leaves models running in other threads alone.

FX patches ``nn.Module.__call__`` for the whole process while it traces. A job running a
model in another thread meanwhile (an in-process job, while a request loads a model for the
first time) went through the tracer and failed with "module is not installed as a
submodule".
"""

from __future__ import annotations

import threading

import torch
import torchvision

from cnnviz.layers import layer_index
from cnnviz.models.shapes import load_shapes_net


def test_a_model_runs_in_another_thread_while_one_is_traced() -> None:
    running = load_shapes_net().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = running(x)
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_running() -> None:
        try:
            with torch.no_grad():
                while not stop.is_set():
                    assert torch.equal(running(x), expected)
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=keep_running)
    thread.start()
    try:
        for _ in range(3):
            index = layer_index(torchvision.models.resnet18(), (3, 64, 64), "r18")
            assert index.info("layer1").shape == (64, 16, 16)
    finally:
        stop.set()
        thread.join()
    assert errors == []
