"""The typed client: answers parsed into the schemas, errors from problem+json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnviz_client import ApiError, Client, JobFailed
from schemas.jobs import JobRead, JobStatus


def test_models_layers_and_feature_maps(service_url: str, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    Image.new("L", (30, 50), 128).save(picture)  # 1 channel, not square
    with Client(service_url) as client:
        assert "shapes" in [m.name for m in client.models().models]
        layers = {layer.name: layer.shape for layer in client.layers("shapes").layers}
        assert layers["block2.relu"] == [32, 32, 32]
        maps = client.feature_maps("shapes", ["block2.relu"], image=picture, top_k=4)
        [layer] = maps.layers
        assert layer.shape == [32, 32, 32]
        assert len(layer.grid.channels) == 4
        sample = client.feature_maps("shapes", ["block1.conv"], sample="star", channels=[3])
        assert sample.layers[0].grid.channels == [3]


def test_an_error_answer_raises_with_its_code_and_detail(service_url: str) -> None:
    with Client(service_url) as client, pytest.raises(ApiError) as caught:
        client.feature_maps("shapes", ["block9"], sample="star")
    assert caught.value.status == 422
    assert caught.value.code == "unknown_layer"
    assert "block9" in caught.value.detail


def test_optimize_and_wait_with_progress(service_url: str, tmp_path: Path) -> None:
    seen: list[JobRead[Any, Any]] = []
    with Client(service_url) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[0, 1], steps=24, seed=3)
        assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        done = client.wait(job.id, progress=seen.append, timeout=120, poll_s=0.05)
        assert done.status == JobStatus.SUCCEEDED
        assert seen[-1].status == JobStatus.SUCCEEDED
        path = client.save_result(done, tmp_path / "patterns.png")
    with Image.open(io.BytesIO(path.read_bytes())) as grid:
        assert grid.format == "PNG"
        assert grid.width > 64


def test_wait_raises_for_a_cancelled_job(service_url: str) -> None:
    with Client(service_url) as client:
        job = client.optimize("shapes", layer="block3.relu", channels=[0], steps=4000, seed=9)
        client.cancel(job.id)
        with pytest.raises(JobFailed) as caught:
            client.wait(job.id, timeout=120, poll_s=0.05)
    assert caught.value.job.status == JobStatus.CANCELLED


def test_attribution_methods_and_maps(service_url: str) -> None:
    with Client(service_url) as client:
        listed = client.attribution_methods("shapes")
        names = [m.name for m in listed.methods]
        assert "gradcam" in names and "scorecam" in names
        answer = client.attribute(
            "shapes", sample="star", method="gradcam", layer="block4.relu", metrics=["deletion"]
        )
        [item] = answer.attributions
        assert item.target.label == "star"
        assert item.faithfulness is not None and item.faithfulness.deletion_auc is not None
        raw = client.attribute_raw("shapes", sample="star", method="gradcam", layer="block4.relu")
        maps = np.load(io.BytesIO(raw))
        assert maps.shape == (1, 64, 64) and maps.dtype == np.float32
        assert float(maps.max()) == pytest.approx(item.stats.max, rel=1e-6)
