"""Caricature (feature inversion): the optimized image's activations come to point where the
given image's do; the image travels by reference, on every records backend and transport."""

from __future__ import annotations

import base64
import hashlib
import io

import httpx
import pytest
import torch
from PIL import Image

from cnnviz.axes import unit_maps
from cnnviz.data.shapes import sample_image
from cnnviz.imaging import encode_png
from cnnviz.models import LoadedModel, ModelRegistry
from schemas.optimization import OptimizationCreate
from tests.jobs.client import submit, wait_job
from workers.kinds.optimization import optimize

LAYER = "block2.relu"


@pytest.fixture(scope="module")
def shapes() -> LoadedModel:
    return ModelRegistry.from_file(None).get("shapes")


def _acts(loaded: LoadedModel, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        out = loaded.index.capture(loaded.spec.preprocess(image), [LAYER])[LAYER]
    return unit_maps(out, loaded.index.info(LAYER)).flatten()


def _cossim(loaded: LoadedModel, image: Image.Image, target: torch.Tensor) -> float:
    return float(torch.cosine_similarity(_acts(loaded, image), target, dim=0))


def test_optimizing_a_caricature_points_the_activations_at_the_images(
    shapes: LoadedModel,
) -> None:
    target = _acts(shapes, sample_image("star"))
    request = OptimizationCreate.model_validate(
        {"layer": LAYER, "caricature": {"sample": "star"}, "steps": 96, "seed": 3}
    )
    result = optimize(request, shapes)
    (unit,) = result.units
    assert unit.image is not None
    optimized = Image.open(io.BytesIO(base64.b64decode(unit.image)))
    noise = Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy())
    after, before = _cossim(shapes, optimized, target), _cossim(shapes, noise, target)
    print(f"cosine similarity to the star's activations: noise {before:.3f}, optimized {after:.3f}")
    assert after > 0.8 and after > before + 0.3
    assert unit.objective > 5 * unit.initial_objective


def test_a_caricatures_image_is_kept_by_its_sha256_and_the_job_names_it(
    api: httpx.Client,
) -> None:
    png = encode_png(sample_image("star"))
    digest = hashlib.sha256(png).hexdigest()
    body = {"layer": LAYER, "steps": 16, "image_size": 32}
    created = submit(api, {**body, "caricature": {"image": base64.b64encode(png).decode()}})
    kept = created["request"]["caricature"]
    assert kept["image"] is None and kept["image_sha256"] == digest  # the task names it
    done = wait_job(api, created["id"])
    assert done["status"] == "succeeded", done["error"]
    (unit,) = done["result"]["units"]
    assert unit["objective"] > unit["initial_objective"]
    # The kept image serves a request that names it, as long as the job's records last.
    again = submit(api, {**body, "seed": 1, "caricature": {"image_sha256": digest}})
    assert wait_job(api, again["id"])["status"] == "succeeded"


def test_a_caricature_without_a_usable_image_is_refused_at_submit(api: httpx.Client) -> None:
    url = "/v1/models/shapes/optimizations"
    for caricature, message in (
        ({"image": base64.b64encode(b"not an image").decode()}, "image"),
        ({"image_sha256": "0" * 64}, "no image is kept"),
        ({"sample": "star", "image_sha256": "0" * 64}, "exactly one"),
    ):
        response = api.post(url, json={"layer": LAYER, "caricature": caricature})
        assert response.status_code == 422, response.text
        assert message in response.text
