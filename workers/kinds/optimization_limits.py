"""Admission of optimization jobs: what one will cost, checked before it is queued.

Everything that would make a job fail for its size fails here instead, with a 422 that
names the limit and by how much the job is over it, before the API answers 202 and before
any memory is spent: the total work, the result grid, and the memory of one image against
the render's budget (:func:`cnnviz.optvis.plan_memory`, which probes smaller images), with
the previews and, on CPU, the result's pictures counted in that budget too
(:mod:`workers.kinds.optimization_pictures`).
"""

from __future__ import annotations

import math

from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.grid import DEFAULT_MAX_GRID_PIXELS, IMAGE_GRID_PADDING, grid_layout
from cnnviz.models import LoadedModel
from cnnviz.optvis import plan_memory
from cnnviz.optvis.objectives import Objective
from cnnviz.optvis.render import RenderSettings
from schemas.optimization import OptimizationCreate
from workers.kinds.optimization_pictures import preview_reserve, result_bytes

_MIB = 1 << 20


def admit(
    request: OptimizationCreate,
    loaded: LoadedModel,
    objective: Objective,
    settings: RenderSettings,
    max_work: int,
    on_cpu: bool | None = None,
    budget_note: str = "",
    max_grid_pixels: int = DEFAULT_MAX_GRID_PIXELS,
) -> None:
    """Raise InvalidArgumentError when the resolved ``request`` could not run on ``loaded``.

    ``request`` is resolved (channels and image size set), ``objective`` and ``settings`` are
    what it renders with; ``max_work`` caps steps × images × image pixels. ``on_cpu``: whether
    the device that runs it is a CPU, where the result's pictures share the budget (None:
    ``loaded``'s device); ``budget_note`` says where the budget came from, in a refusal.
    """
    if on_cpu is None:
        on_cpu = loaded.device.type == "cpu"
    budget = f"the render's memory budget of {settings.memory_budget_mb} MiB" + (
        f" ({budget_note})" if budget_note else ""
    )
    assert request.image_size is not None  # resolved by prepare
    side = request.image_size
    images = objective.n_units
    work = request.steps * images * side * side
    if work > max_work:
        raise InvalidArgumentError(
            f"the job is {request.steps} steps × {images} images × {side}×{side} pixels = "
            f"{work} pixel-steps, {work / max_work:.2f} times the limit of "
            f"{max_work} (CNNVIZ_MAX_JOB_WORK); ask for fewer steps, channels, "
            "images_per_unit or a smaller image_size"
        )
    per_unit = request.images_per_unit
    layout = grid_layout(
        images,
        (side, side),
        columns=per_unit if per_unit > 1 else None,
        padding=IMAGE_GRID_PADDING,
        max_pixels=math.inf,  # type: ignore[arg-type]  # compared below, with the job's words
    )
    height, width = layout.size
    if height * width > max_grid_pixels:
        raise InvalidArgumentError(
            f"the result grid would be {width}×{height} = {width * height} pixels, "
            f"{width * height / max_grid_pixels:.2f} times the limit of "
            f"{max_grid_pixels}; ask for fewer channels or images_per_unit, or a "
            "smaller image_size"
        )
    channels = loaded.spec.channels
    plan = plan_memory(
        loaded.module,
        objective,
        input_shape=loaded.spec.input_shape,
        mean=loaded.spec.mean,
        std=loaded.spec.std,
        settings=settings,
        device=loaded.device,
        model_name=loaded.spec.name,
        reserve_bytes=preview_reserve(images, per_unit, channels, side),
    )
    together = per_unit if request.diversity > 0 else 1  # diversity compares them in one chunk
    if plan.chunk_size < together:
        need = plan.fixed + plan.per_image * together + plan.reserved
        what = (
            "one image needs" if together == 1 else f"{together} images compared by diversity need"
        )
        raise InvalidArgumentError(
            f"{what} about {need / _MIB:.0f} MiB, {(need - plan.budget) / _MIB:.0f} MiB over "
            f"{budget}; lower image_size" + (" or images_per_unit" if together > 1 else "")
        )
    # The result is encoded once the render has let its chunks go: it needs the budget alone.
    encoding = result_bytes(images, channels, side) if on_cpu else 0
    if encoding > plan.budget:
        raise InvalidArgumentError(
            f"the result's {images} images of {side}×{side} pixels need about "
            f"{encoding / _MIB:.0f} MiB while they are encoded, "
            f"{(encoding - plan.budget) / _MIB:.0f} MiB over {budget}; ask for fewer "
            "channels or images_per_unit, or a smaller image_size"
        )
