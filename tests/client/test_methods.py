"""The client's methods beyond maps and optimizations, each against the real service, with
answers checked against what is known: the files of the data set, the layers' shapes, the
sample's size, what a job reported."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from cnnviz_client import ApiError, Client, JobFailed
from cnnviz_client.kinds import AttributionJob, ExemplarsJob, OptimizationJob
from schemas.jobs import JobStatus
from tests.client.conftest import SMALL_IMAGES


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def npy_shape(data: bytes) -> tuple[int, ...]:
    assert data[:6] == b"\x93NUMPY"
    (header_len,) = struct.unpack("<H", data[8:10])
    header = data[10 : 10 + header_len].decode("latin1")
    return tuple(int(n) for n in header.split("'shape': (")[1].split(")")[0].split(",") if n)


def safetensors_header(data: bytes) -> dict[str, dict[str, object]]:
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, dict[str, object]] = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    return header


def test_health_readiness_samples_and_datasets(service_url: str, dataset_root: Path) -> None:
    with Client(service_url) as client:
        assert client.health().status == "ok"
        assert client.ready().status in ("ready", "not_ready")
        names = [s.name for s in client.samples().samples]
        assert "star" in names
        assert png_size(client.sample("star")) == (64, 64)
        datasets = {d.name: d for d in client.datasets().datasets}
        assert datasets["small"].images == SMALL_IMAGES + 1  # and a corrupt PNG: files found
        some = sorted(p for p in dataset_root.rglob("*.png") if "zz-" not in p.name)[0]
        image_id = some.relative_to(dataset_root).as_posix()  # "<label>/<n>.png": a slash
        assert client.dataset_image("small", image_id) == some.read_bytes()
        with pytest.raises(ApiError) as caught:
            client.sample("nothing")
    assert caught.value.status == 404 and caught.value.code == "unknown_sample"


def test_feature_maps_as_png_and_as_raw_tensors(service_url: str) -> None:
    with Client(service_url) as client:
        shapes = {layer.name: layer.shape for layer in client.layers("shapes").layers}
        png = client.feature_maps_png("shapes", "block1.conv", sample="star", channels=[0, 1])
        assert png_size(png) == (2 * 64 + 3, 64 + 2)  # two tiles in a row, 1 px padding
        npy = client.feature_maps_raw("shapes", ["block2.relu"], sample="star", format="npy")
        assert npy_shape(npy)[-3:] == tuple(shapes["block2.relu"])
        both = client.feature_maps_raw("shapes", ["block1.conv", "block3.relu"], sample="star")
        header = safetensors_header(both)
    assert set(header) == {"block1.conv", "block3.relu"}
    assert header["block3.relu"]["shape"][-3:] == shapes["block3.relu"]  # type: ignore[index]


def test_weights_as_json_and_png(service_url: str) -> None:
    with Client(service_url) as client:
        answer = client.weights("shapes", "block1.conv", filters=[0, 2, 4])
        png = client.weights_png("shapes", "block1.conv", filters=[0, 2, 4], scale=8, columns=3)
    assert answer.weight_shape[1:] == [3, 3, 3] and answer.mode == "rgb"
    assert answer.grid.filters == [0, 2, 4]
    assert len(answer.values) == 3
    width, height = png_size(png)
    assert (width, height) == (3 * (3 * 8) + 4, 3 * 8 + 2)  # three 24 px tiles in one row


def test_attributions_at_once_and_as_a_job(service_url: str) -> None:
    with Client(service_url) as client:
        answer = client.attribute(
            "shapes", sample="star", method="gradcam", layer="block4.relu", target="star"
        )
        assert [a.target.label for a in answer.attributions] == ["star"]
        assert png_size(client.attribute_png("shapes", sample="star", method="saliency")) == (
            64,
            64,
        )
        job = client.attribute_job("shapes", sample="star", method="saliency", target=[1, 2])
        assert isinstance(job, AttributionJob)
        done = client.wait(job.id, timeout=120)
    assert isinstance(done, AttributionJob) and done.result is not None
    assert [a.target.index for a in done.result.attributions] == [1, 2]


def test_an_exemplars_job_and_a_channels_grid(service_url: str) -> None:
    with Client(service_url) as client:
        job = client.exemplars("shapes", dataset="small", layers=["block3.relu"], k=3)
        done = client.wait(job.id, timeout=120)
        assert isinstance(done, ExemplarsJob) and done.result is not None
        top = done.result.layers[0].units[5].top
        grid = client.exemplar_grid(job.id, "block3.relu", 5, mode="crop")
    assert (done.result.images, done.result.skipped) == (SMALL_IMAGES, 1)  # the corrupt PNG
    assert grid.images == [e.image for e in top]  # tiles in the job's order
    assert grid.scores == pytest.approx([e.score for e in top])
    assert png_size(base64.b64decode(grid.png))[0] > 0


def test_a_jobs_files_events_and_forgetting_it(service_url: str) -> None:
    with Client(service_url) as client:
        job = client.optimize(
            "shapes", layer="block3.relu", channels=[0, 1], steps=16, image_size=32, reuse=False
        )
        done = client.wait(job.id, timeout=120)
        assert isinstance(done, OptimizationJob)
        events = list(client.events(job.id))  # a finished job: its end event, at once
        assert [e.name for e in events if e.name] == ["end"]
        assert events[-1].job is not None and events[-1].job.status == JobStatus.SUCCEEDED
        urls_only = client.job(job.id, inline=False)
        assert urls_only.result is not None and urls_only.result.grid is None
        assert png_size(client.result_png(job.id)) == png_size(client.result_png(done))
        assert png_size(client.unit_png(job.id, 1)) == (32, 32)
        assert png_size(client.preview_png(job.id)) == png_size(client.result_png(job.id))
        assert npy_shape(client.result_npy(job.id)) == (2, 3, 32, 32)
        assert safetensors_header(client.result_safetensors(job.id))["images"]["shape"] == [
            2,
            3,
            32,
            32,
        ]
        client.delete(job.id)
        with pytest.raises(ApiError) as caught:
            client.job(job.id)
    assert caught.value.status == 404


def test_wait_until_a_condition_and_job_failed_when_it_cannot_come(service_url: str) -> None:
    with Client(service_url) as client:
        job = client.optimize(
            "shapes", layer="block3.relu", channels=[0], steps=4000, seed=21, reuse=False
        )
        running = client.wait(
            job.id,
            until=lambda j: j.progress is not None and j.progress.step >= 3,
            timeout=120,
        )
        assert running.status == JobStatus.RUNNING and running.progress is not None
        assert running.progress.step >= 3
        client.cancel(job.id)
        with pytest.raises(JobFailed) as caught:  # it ends cancelled: never 9999 steps
            client.wait(job.id, until=lambda j: False, timeout=120)
    assert caught.value.job.status == JobStatus.CANCELLED
