"""Jobs leave nothing behind: after many jobs of every kind in one process, the live tensors
and parameters are those after the first round.

Each optimization job used to keep its whole memory-probe graph (activations, folded weights)
alive through a reference cycle in autograd's C++ graph, about 5 MiB a job on ``shapes``; the
API's memory grew without bound. The counts come from ``gc``, in the API's own process (the
in-process transport, served in a thread of this one).
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from service.main import create_app
from tests.jobs.client import FINISHED, MODEL, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.datasets import SMALL
from tests.jobs.procs import serve

_seeds = itertools.count(1)
NO_CACHE = {"Cache-Control": "no-cache"}


def _live() -> tuple[int, int]:
    """Live tensors and, among them, parameters (what a leaked graph or model copy holds)."""
    gc.collect()
    # By type, not isinstance: that reads __class__, which some of torch's objects warn on.
    types = [type(o) for o in gc.get_objects()]
    tensors = [t for t in types if issubclass(t, torch.Tensor)]
    return len(tensors), sum(issubclass(t, torch.nn.Parameter) for t in tensors)


def _post(api: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = api.post(f"/v1/models/{MODEL}/{path}", json=body, headers=NO_CACHE)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _round(api: httpx.Client) -> None:
    """One job of each kind to its end, and one optimization cancelled while it runs."""
    seed = next(_seeds) % 12  # a class of `shapes`, and a new one each round
    finished = [
        _post(
            api,
            "optimizations",
            {"layer": "block2.relu", "channels": [0, 3], "steps": 16, "seed": seed},
        ),
        _post(api, "exemplars", {"dataset": SMALL, "layers": ["block2.relu", "fc"], "k": 4}),
        _post(
            api,
            "attribution-jobs",
            {"sample": "star", "method": "integrated_gradients", "steps": 16, "target": [seed]},
        ),
    ]
    for job_id in finished:
        done = wait_job(api, job_id, timeout=120)
        assert done["status"] == "succeeded", done["error"]
    long = {"layer": "block3.relu", "channels": [1], "steps": 4096, "seed": seed}
    cancelled = _post(api, "optimizations", long)
    wait_job(api, cancelled, statuses={"running"}, step=2)
    assert api.post(f"/v1/jobs/{cancelled}/cancel").status_code == 202
    assert wait_job(api, cancelled, statuses=FINISHED)["status"] == "cancelled"


@pytest.fixture
def in_process_api(models_file: Path) -> Iterator[httpx.Client]:
    settings = api_settings(None, models_file=models_file)
    with serve(create_app(settings)) as client:
        yield client


@pytest.mark.slow
def test_jobs_of_every_kind_leave_no_tensors_behind(in_process_api: httpx.Client) -> None:
    _round(in_process_api)
    _round(in_process_api)  # caches that fill once (extractors, step graphs) are full now
    tensors, parameters = _live()
    for _ in range(4):
        _round(in_process_api)
    after_tensors, after_parameters = _live()
    # Each leaked optimization kept about 30 tensors (4 of them folded weights): 4 rounds
    # of 2 optimizations would be some 240. A few may be in flight in the API's threads.
    assert after_tensors - tensors <= 8, (tensors, after_tensors)
    assert after_parameters == parameters
