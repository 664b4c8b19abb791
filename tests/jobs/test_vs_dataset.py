"""An optimization's patterns against a data set (``exemplars_job``), planted: a hand-wired net
whose channels are the grey level ``x`` and ``1 - x`` of the pixels, over a data set of flat
grey images of known levels, so every activation, ratio and rank is known by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import safetensors.numpy
from PIL import Image

from service.main import create_app
from tests.api.conftest import one_by_one
from tests.jobs.client import LONG, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve

# The grey levels of the data set: ten flat 16×16 images, exact in 8 bits.
LEVELS = [13 + 25 * i for i in range(10)]
GREYS = "greys"
ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
MODELS = (
    one_by_one("tiny16", 16)
    + "\n"
    + one_by_one("tiny", 8)
    + '\n[datasets.greys]\npath = "{root}"\n'
)
# One step from the starting noise: patterns of about mid-grey, which rank inside the data set.
PATTERNS = {"layer": "relu", "channels": [0, 1], "steps": 1, "seed": 3}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """In-process, with two API keys; the models file declares the data set of grey levels
    (ImageFolder labels ``dark`` and ``light``, so a dissection by labels can read it)."""
    root = tmp_path_factory.mktemp("greys")
    for level in LEVELS:
        folder = root / GREYS / ("dark" if level < 128 else "light")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), level).save(folder / f"{level:03d}.png")
    models = root / "models.toml"
    models.write_text(MODELS.format(root=root / GREYS), encoding="utf-8")
    settings = api_settings(None, api_keys="alice-key,bob-key", models_file=str(models))
    with serve(create_app(settings)) as client:
        client.headers.update(ALICE)
        yield client


def _done(api: httpx.Client, model: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model}/{path}", json=body)
    assert response.status_code in (200, 202), response.text
    finished = wait_job(api, response.json()["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished


def _exemplars(api: httpx.Client, **fields: Any) -> str:
    body = {"dataset": GREYS, "layers": ["relu"], "k": 16, **fields}
    return str(_done(api, "tiny16", "exemplars", body)["id"])


def _patterns(api: httpx.Client, model: str = "tiny16", **fields: Any) -> httpx.Response:
    return api.post(f"/v1/models/{model}/optimizations", json={**PATTERNS, **fields})


def _pixels(api: httpx.Client, job_id: str) -> Any:
    """The optimized images as the job kept them: ``(N, 1, 16, 16)`` float32 in [0, 1]."""
    raw = api.get(f"/v1/jobs/{job_id}/result.safetensors")
    assert raw.status_code == 200, raw.text
    return safetensors.numpy.load(raw.content)["images"]


def _expected(activation: float, data: list[float], k: int) -> tuple[float, int | None]:
    """Ratio and rank by hand: the data's best over the pattern, 1 + the images above it."""
    data = sorted(data, reverse=True)
    above = sum(1 for d in data if d > activation)
    return activation / data[0], (above + 1 if above < k or k >= len(data) else None)


def test_each_pattern_is_measured_against_the_data_set(api: httpx.Client) -> None:
    exemplars = _exemplars(api)
    response = _patterns(api, exemplars_job=exemplars)
    assert response.status_code == 202, response.text
    job = wait_job(api, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["request"]["dataset_scores"]["job"] == exemplars
    pixels = _pixels(api, job["id"])
    # Channel 0 is the grey level x, channel 1 is 1 - x: mean activations of the flat images.
    data = {0: [v / 255 for v in LEVELS], 1: [1 - v / 255 for v in LEVELS]}
    ranks = []
    for unit, image in zip(job["result"]["units"], pixels, strict=True):
        channel = unit["channel"]
        activation = float(image.mean()) if channel == 0 else 1 - float(image.mean())
        ratio, rank = _expected(activation, data[channel], 16)
        seen = unit["vs_dataset"]
        assert seen["exemplars_job"] == exemplars and seen["dataset"] == GREYS
        assert (seen["pool"], seen["top_k"], seen["images"]) == ("mean", 10, 10)
        assert seen["activation"] == pytest.approx(activation, abs=1e-5)
        assert seen["top_score"] == pytest.approx(max(data[channel]), abs=1e-6)
        assert seen["top_image"] == ("light/238.png" if channel == 0 else "dark/013.png")
        assert seen["ratio"] == pytest.approx(ratio, abs=1e-5)
        assert seen["rank"] == rank
        ranks.append(rank)
    # Mid-grey patterns: inside the data set, below its best (the warning sign, ratio < 1).
    assert all(r is not None and 1 < r <= 10 for r in ranks), ranks


def test_below_the_stored_top_k_the_rank_is_unknown(api: httpx.Client) -> None:
    exemplars = _exemplars(api, k=3)
    job = wait_job(api, _patterns(api, exemplars_job=exemplars).json()["id"])
    pixels = _pixels(api, job["id"])
    for unit, image in zip(job["result"]["units"], pixels, strict=True):
        seen = unit["vs_dataset"]
        assert seen["top_k"] == 3 and seen["images"] == 10
        # About mid-grey: five or so images above it, more than the three kept.
        assert seen["rank"] is None, (float(image.mean()), seen)


def test_the_pooling_is_the_exemplar_jobs(api: httpx.Client) -> None:
    exemplars = _exemplars(api, pool="max")
    job = wait_job(api, _patterns(api, exemplars_job=exemplars).json()["id"])
    image = _pixels(api, job["id"])[0]
    seen = job["result"]["units"][0]["vs_dataset"]
    assert seen["pool"] == "max"
    assert seen["activation"] == pytest.approx(float(image.max()), abs=1e-5)
    assert seen["activation"] != pytest.approx(float(image.mean()), abs=1e-3)


def test_a_dissection_is_a_data_set_too(api: httpx.Client) -> None:
    body = {"dataset": GREYS, "layers": ["relu"], "method": "labels", "k": 16}
    dissection = _done(api, "tiny16", "dissections", body)["id"]
    by_exemplars = wait_job(api, _patterns(api, exemplars_job=_exemplars(api)).json()["id"])
    by_dissection = wait_job(api, _patterns(api, exemplars_job=dissection).json()["id"])
    for a, b in zip(by_exemplars["result"]["units"], by_dissection["result"]["units"], strict=True):
        assert b["vs_dataset"]["exemplars_job"] == dissection
        for key in ("activation", "top_score", "ratio"):
            assert b["vs_dataset"][key] == pytest.approx(a["vs_dataset"][key], abs=1e-6)
        assert b["vs_dataset"]["rank"] == a["vs_dataset"]["rank"]


def test_without_exemplars_job_nothing_is_compared(api: httpx.Client) -> None:
    sent = {
        "dataset_scores": {
            "job": "x",
            "dataset": GREYS,
            "pool": "mean",
            "images": 1,
            "units": [{"channel": 0, "top_image": None, "scores": [9.0]}],
        }
    }
    job = wait_job(api, _patterns(api, **sent).json()["id"])
    assert job["status"] == "succeeded"
    assert job["request"]["dataset_scores"] is None  # what a client sends is replaced
    assert all("vs_dataset" not in unit for unit in job["result"]["units"])


def _problem(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code, problem
    assert all(word in problem["detail"] for word in words), problem["detail"]


def test_a_job_that_does_not_fit_is_refused_with_a_reason(api: httpx.Client) -> None:
    exemplars = _exemplars(api)
    _problem(_patterns(api, exemplars_job="nope"), 404, "unknown_job", "'nope'")
    # Another owner's job is unknown to Bob, exactly as an id that never existed.
    bobs = api.post(
        "/v1/models/tiny16/optimizations",
        json={**PATTERNS, "exemplars_job": exemplars},
        headers=BOB,
    )
    _problem(bobs, 404, "unknown_job", repr(exemplars))
    optimization = wait_job(api, _patterns(api).json()["id"])["id"]
    _problem(_patterns(api, exemplars_job=optimization), 422, "invalid_argument", "optimization")
    _problem(_patterns(api, "tiny", exemplars_job=exemplars), 422, "invalid_argument", "'tiny16'")
    conv = _done(api, "tiny16", "exemplars", {"dataset": GREYS, "layers": ["conv"]})["id"]
    _problem(_patterns(api, exemplars_job=conv), 422, "invalid_argument", "'relu'", "conv")
    whole = {"objective": "layer", "channels": "all", "exemplars_job": exemplars}
    _problem(_patterns(api, **whole), 422, "invalid_argument", "'layer'")


def test_a_job_not_yet_succeeded_is_a_conflict(api: httpx.Client) -> None:
    # One in-process job at a time: behind a long one, the exemplar job waits its turn.
    long = api.post("/v1/models/shapes/optimizations", json=LONG).json()["id"]
    body = {"dataset": GREYS, "layers": ["relu"], "k": 5}
    queued = api.post("/v1/models/tiny16/exemplars", json=body).json()["id"]
    try:
        waiting = _patterns(api, exemplars_job=queued)
        _problem(waiting, 409, "job_not_succeeded", "queued")
        assert waiting.headers["Retry-After"] == "1"
    finally:
        for job_id in (queued, long):
            api.post(f"/v1/jobs/{job_id}/cancel")
    wait_job(api, queued)
    cancelled = _patterns(api, exemplars_job=queued)
    _problem(cancelled, 409, "job_not_succeeded", "cancelled")
    assert "Retry-After" not in cancelled.headers
    wait_job(api, long)
