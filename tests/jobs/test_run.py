"""The one job function on models whose input size is fixed."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from cnnviz.models import ModelRegistry
from schemas.optimization import OptimizationCreate
from workers.kinds.optimization import optimize


def build_fixed_head() -> nn.Module:
    """A conv then a linear head over exactly 16×16 maps: any other input size fails."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 3),
    )


def test_an_image_size_other_than_the_input_is_resized_for_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file(build_fixed_head().state_dict(), str(tmp_path / "head.safetensors"))
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.fixed]\nfactory = "tests.jobs.test_run:build_fixed_head"\n'
        'weights = "head.safetensors"\ninput_size = [16, 16]\n'
    )
    loaded = ModelRegistry.from_file(models).get("fixed")
    request = OptimizationCreate(
        layer="3", objective="class_logit", channels=[0, 2], steps=4, image_size=40
    )
    result = optimize(request, loaded)
    assert [unit.channel for unit in result.units] == [0, 2]
    for unit in result.units:
        assert Image.open(io.BytesIO(base64.b64decode(unit.image))).size == (40, 40)


def _shapes_job(**fields: object) -> list:
    request = OptimizationCreate(layer="block3.relu", steps=12, **fields)  # type: ignore[arg-type]
    loaded = ModelRegistry.from_file(None).get("shapes")
    return optimize(request, loaded).units


def _pixels(unit, mode: str = "RGB") -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A unit's image as a float tensor ``(H, W, 3)`` (``(H, W)`` for mode "L")."""
    image = Image.open(io.BytesIO(base64.b64decode(unit.image))).convert(mode)
    return torch.from_numpy(np.array(image)).float()


def test_several_images_per_unit_and_diversity_among_them() -> None:
    plain = _shapes_job(channels=[3, 7], images_per_unit=2)
    assert [(u.channel, u.sample) for u in plain] == [(3, 0), (3, 1), (7, 0), (7, 1)]
    diverse = _shapes_job(channels=[3, 7], images_per_unit=2, diversity=1000.0)
    # The diversity term is in the loss: same seed, other images.
    assert (_pixels(diverse[0]) - _pixels(plain[0])).abs().mean() > 1.0
    # Penalties reach the optimizer too: a strong total-variation weight gives smoother images.
    smooth = _shapes_job(channels=[3], tv=50.0)

    def roughness(unit) -> float:  # type: ignore[no-untyped-def]
        image = _pixels(unit, "L")
        return float((image[:, 1:] - image[:, :-1]).abs().mean())

    assert roughness(smooth[0]) < roughness(plain[0])


def test_requests_that_cannot_be_honoured_are_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="set images_per_unit >= 2"):
        OptimizationCreate(layer="block3.relu", channels=[1], diversity=100.0)
    with pytest.raises(ValidationError, match="objective 'layer' optimizes one image"):
        OptimizationCreate(layer="block3.relu", objective="layer", images_per_unit=2)
    with pytest.raises(ValidationError, match=r"must be 1 to 512 images, got 300 × 2"):
        OptimizationCreate(layer="block3.relu", channels=list(range(300)), images_per_unit=2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_result_records_the_precision_the_job_ran_in(precision: str) -> None:
    request = OptimizationCreate(
        layer="block2.relu",
        channels=[1],
        steps=3,
        image_size=32,
        precision=precision,  # type: ignore[arg-type]
    )
    result = optimize(request, ModelRegistry.from_file(None).get("shapes"))
    assert result.precision == precision
    assert result.settings["precision"] == precision
