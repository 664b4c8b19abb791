"""The one job function on models whose input size is fixed."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnviz.models import ModelRegistry
from schemas.jobs import OptimizationCreate, OptimizationTask
from workers.run import run_job


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
    result = run_job(
        OptimizationTask(job_id="j", model="fixed", request=request, ttl_seconds=60), loaded
    )
    assert [unit.channel for unit in result.units] == [0, 2]
    for unit in result.units:
        assert Image.open(io.BytesIO(base64.b64decode(unit.image))).size == (40, 40)
