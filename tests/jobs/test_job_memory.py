"""A job's memory budget covers its previews and its result, and a large job's preview is
a small picture: its first images, shrunk."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from PIL import Image

from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging import encode_png, image_grid, to_pixels
from cnnviz.models import ModelRegistry
from cnnviz.optvis import objectives, plan_memory, visualize
from schemas.jobs import Progress
from schemas.optimization import OptimizationCreate
from tests.core.test_optvis_render import GREY, Wide
from workers.kinds import JobContext
from workers.kinds.optimization import build_objective, optimize, prepare, render_settings
from workers.kinds.optimization_limits import admit
from workers.kinds.optimization_pictures import (
    PREVIEW_MAX_PIXELS,
    grid_png,
    pixels,
    preview_layout,
    result_bytes,
)

MIB = 1 << 20


@pytest.mark.parametrize(
    ("images", "per_unit", "expected"),
    [
        (3, 1, (3, 2, 510)),  # few images: all, as large as the grid allows
        (128, 1, (64, 8, 126)),  # the first 64, 8 × 8
        (512, 4, (64, 4, 126)),  # 16 whole units, one row each
        (256, 2, (64, 2, 126)),
    ],
)
def test_the_preview_layout(images: int, per_unit: int, expected: tuple[int, int, int]) -> None:
    count, columns, side = preview_layout(images, per_unit)
    assert (count, columns, side) == expected
    rows = -(-count // columns)
    assert rows * columns * (side + 2) ** 2 <= PREVIEW_MAX_PIXELS * 1.05


def test_a_large_jobs_preview_is_its_first_images_shrunk() -> None:
    loaded = ModelRegistry.from_file(None).get("shapes")
    request = OptimizationCreate(
        layer="block4.relu", channels="all", steps=3, image_size=160, seed=3
    )
    previews: list[tuple[Progress, bytes]] = []

    def report(progress: Progress, preview: bytes | None) -> None:
        if preview is not None:
            previews.append((progress, preview))

    context = JobContext(on_progress=report, progress_interval_s=0, preview_interval_s=0)
    result = optimize(request, loaded, context)
    assert len(result.units) == 128 and previews
    progress, png = previews[-1]
    assert progress.preview_images == 64
    image = Image.open(io.BytesIO(png))
    # 8 × 8 images of 126 px (160 px shrunk), 2 px apart: about 1024², not 12 × 11 of 160.
    assert image.size == (8 * 128 + 2, 8 * 128 + 2)
    assert len(png) < 4 * MIB


def test_pixels_and_grid_match_the_whole_batch_conversion() -> None:
    images = torch.rand((37, 3, 9, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pixels(images), to_pixels(images))
    grid, layout = image_grid(images, columns=5)
    png, columns = grid_png(pixels(images), 5)
    assert columns == layout.columns == 5
    assert png == encode_png(grid)


def test_the_callers_reserve_takes_from_the_chunks_on_cpu() -> None:
    model = Wide()
    objective = objectives.channel("tail", [0, 1, 2, 3, 0, 1])
    base = dict(input_shape=(3, 32, 32), **GREY)
    plan = plan_memory(model, objective, **base)  # type: ignore[arg-type]
    assert plan.chunk_size >= 6
    reserve = plan.budget - plan.reserved - plan.fixed - 2 * plan.per_image
    reserved = plan_memory(model, objective, reserve_bytes=reserve, **base)  # type: ignore[arg-type]
    assert reserved.reserved == plan.reserved + reserve
    assert reserved.chunk_size == 2
    result = visualize(model, objective, reserve_bytes=reserve, **base)  # type: ignore[arg-type]
    assert (result.chunk_size, result.n_chunks) == (2, 3)


def test_a_result_too_large_to_encode_in_the_budget_is_refused() -> None:
    loaded = ModelRegistry.from_file(None).get("shapes")
    request = prepare(
        OptimizationCreate(
            layer="block4.relu", channels="all", images_per_unit=4, image_size=176, steps=1
        ),
        loaded,
    )
    encoding = result_bytes(512, 3, 176)
    settings = replace(
        render_settings(request, loaded.device), memory_budget_mb=int(encoding * 0.9) // MIB
    )
    with pytest.raises(InvalidArgumentError, match="while they are encoded") as error:
        admit(request, loaded, build_objective(request, loaded), settings, 2**40)
    assert f"{settings.memory_budget_mb} MiB" in str(error.value)
    # With room for the encoding, the same job is admitted.
    roomy = replace(settings, memory_budget_mb=encoding // MIB + 64)
    admit(request, loaded, build_objective(request, loaded), roomy, 2**40)


def test_a_job_renders_with_its_devices_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    request = OptimizationCreate(layer="block3.relu", channels="all", image_size=64, steps=1)
    assert render_settings(request, torch.device("cpu")).memory_budget_mb == 1024
    h200 = type("Properties", (), {"total_memory": 143_771 * MIB})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _device: h200)
    assert render_settings(request, torch.device("cuda:0")).memory_budget_mb == 143_771 // 4
