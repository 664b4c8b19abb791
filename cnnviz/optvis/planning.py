"""Memory planning: how many units a chunk of a render holds within the memory budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import preserved_state
from cnnviz.optvis import objectives as obj
from cnnviz.optvis.chunking import MemoryEstimate, estimate_memory
from cnnviz.optvis.job import _build_job, _Job, _with_settings_terms
from cnnviz.optvis.settings import _MIB, RenderSettings

__all__ = ["MemoryPlan", "plan_memory"]


@dataclass(frozen=True)
class MemoryPlan:
    """What one optimization step of a render needs: ``fixed + per_image × n`` bytes for a
    chunk of n images, plus ``reserved`` (on CPU, the result images and the caller's
    ``reserve_bytes``) for the whole render;
    ``budget`` is ``memory_budget_mb`` in bytes."""

    fixed: int
    per_image: int
    reserved: int
    budget: int

    @property
    def chunk_size(self) -> int:
        """The most images one chunk may hold (0: not even one fits)."""
        return MemoryEstimate(self.fixed, self.per_image).chunk_size(self.budget, self.reserved)

    @property
    def one_image(self) -> int:
        """Bytes of a chunk of one image, with what is reserved."""
        return self.fixed + self.per_image + self.reserved


def _memory_plan(job: _Job, n_units: int, model: nn.Module, reserve_bytes: int = 0) -> MemoryPlan:
    def probe(n: int) -> torch.Tensor:
        raw = job.init_raw([0] * n).requires_grad_(True)
        images = job.param.images(raw)
        params = job.transform_params([0] * n)[0]
        rows = job.rows([0] * n)
        _, total = job.objective(job.batch(images, job.transform(images, params), rows, False))
        return -total.sum()

    raw_bytes = math.prod(job.param.raw_shape) * 4
    # Parameters, gradient, Adam's two moments; transform parameters are negligible.
    state = 4 * raw_bytes
    estimate = estimate_memory(probe, list(model.parameters()), state)
    reserved = 0
    if job.device.type == "cpu":  # result images and the caller's share the budget's memory
        reserved = n_units * job.param.channels * math.prod(job.param.size) * 4 + reserve_bytes
    budget = job.settings.memory_budget_mb * _MIB
    return MemoryPlan(estimate.fixed, estimate.per_image, reserved, budget)


def _too_large(plan: MemoryPlan, settings: RenderSettings) -> InvalidArgumentError:
    need = plan.one_image / _MIB
    over = (plan.one_image - plan.budget) / _MIB
    return InvalidArgumentError(
        f"one image needs about {need:.0f} MiB, {over:.0f} MiB over memory_budget_mb="
        f"{settings.memory_budget_mb}; raise the budget or lower image_size"
    )


def _chunk_size(job: _Job, n_units: int, model: nn.Module, reserve_bytes: int = 0) -> int:
    """How many units one chunk may hold under the memory budget (at least 1, or an error)."""
    plan = _memory_plan(job, n_units, model, reserve_bytes)
    if plan.chunk_size < 1:
        raise _too_large(plan, job.settings)
    return min(plan.chunk_size, n_units)


# Above this side, plan_memory probes a quarter and half the side and extrapolates.
_PROBE_SIDE = 128


def plan_memory(
    model: nn.Module,
    objective: obj.Objective,
    *,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: RenderSettings = RenderSettings(),
    device: torch.device | str = "cpu",
    model_name: str = "model",
    reserve_bytes: int = 0,
) -> MemoryPlan:
    """The memory :func:`visualize` would plan for, found without allocating it.

    :func:`visualize` probes one and two images at the real ``image_size``, which allocates
    what it measures. Here, for a side over 128, the probes run at a quarter and half the
    side (a sixteenth and a quarter of the pixels) and the bytes are extrapolated in the
    pixel count (what the parameterization and transforms allocate grows with it; what the
    model allocates at its input size does not): the probes allocate at most a quarter of
    what a render would. On ``shapes`` the extrapolated bytes per image were within 13% of
    a probe at the real side for 256 px and within 5% for 384 and 512 px. Raises the core
    errors (unknown layer, unit out of range), never for the budget: see ``chunk_size``.
    ``reserve_bytes`` as for :func:`visualize` (not extrapolated: it is the caller's own).
    """
    device = torch.device(device)
    objective = _with_settings_terms(objective, settings)
    side = settings.image_size or max(input_shape[1:])
    sides = [side] if side <= _PROBE_SIDE else [side // 4, side // 2]
    plans = []
    with preserved_state(model, frozen=True):
        for probe_side in sides:
            probe_settings = replace(settings, image_size=probe_side)
            job = _build_job(
                model, objective, input_shape, mean, std, probe_settings, device, model_name
            )
            plans.append(_memory_plan(job, objective.n_units, model, reserve_bytes))
    if len(plans) == 1:
        return plans[0]
    small, large = plans
    scale = (side**2 - sides[0] ** 2) / (sides[1] ** 2 - sides[0] ** 2)

    def grow(a: int, b: int) -> int:
        return int(a + (b - a) * scale)

    caller = reserve_bytes if device.type == "cpu" else 0  # the caller's own: not grown
    return MemoryPlan(
        grow(small.fixed, large.fixed),
        grow(small.per_image, large.per_image),
        grow(small.reserved - caller, large.reserved - caller) + caller,
        small.budget,
    )
