"""Jobs that could never run are refused before the 202, with the limit and by how much."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.main import create_app
from tests.jobs.client import LARGE, MODEL
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve

URL = f"/v1/models/{MODEL}/optimizations"


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with serve(create_app(api_settings(None, max_job_work=10**9))) as client:
        yield client


def _refused(api: httpx.Client, body: dict[str, Any]) -> str:
    response = api.post(URL, json=body, headers={"Cache-Control": "no-cache"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_argument"
    detail: str = response.json()["detail"]
    return detail


def test_the_issues_whole_layer_at_384_px_is_refused_for_its_work(api: httpx.Client) -> None:
    body = {"layer": "block4.relu", "channels": "all", "images_per_unit": 4, "image_size": 384}
    detail = _refused(api, body)
    # 256 steps × 512 images × 384² pixels against 10⁹.
    assert "256 steps × 512 images × 384×384 pixels = 19327352832 pixel-steps" in detail
    assert "19.33 times the limit of 1000000000 (CNNVIZ_MAX_JOB_WORK)" in detail


def test_a_grid_too_large_to_draw_is_refused(api: httpx.Client) -> None:
    body = {"layer": "block3.relu", "channels": "all", "image_size": 1024, "steps": 1}
    detail = _refused(api, body)
    assert "the result grid would be 8210×8210 = 67404100 pixels" in detail
    assert "4.02 times the limit of 16777216" in detail


def test_images_that_cannot_share_the_memory_budget_are_refused(api: httpx.Client) -> None:
    detail = _refused(api, LARGE)
    assert detail.startswith("8 images compared by diversity need about ")
    assert "MiB over the render's memory budget of 1024 MiB" in detail


def test_the_same_jobs_within_the_limits_are_accepted(api: httpx.Client) -> None:
    body = {"layer": "block2.relu", "channels": [3], "images_per_unit": 2, "diversity": 1.0}
    response = api.post(URL, json={**body, "image_size": 64, "steps": 2})
    assert response.status_code == 202, response.text
