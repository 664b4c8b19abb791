"""Rendering: optimize one image per unit of an objective, many units per forward pass.

:func:`visualize` is the entry point. For an objective of N units it

1. validates the objective against the model (unknown layer, unit out of range) before any
   optimization step, as :func:`check_objective` does alone;
2. splits the N units into chunks whose forward/backward fits ``memory_budget_mb``, measured
   on a probe pass (see :mod:`cnnviz.optvis.chunking`);
3. optimizes each chunk with Adam — parameterization → random transforms → resize to the
   model's input → normalisation → the model, truncated after the deepest layer the
   objective reads — one forward and one backward per step for the whole chunk;
4. reports every step through ``on_step`` and returns the images and objective values.

Every random number comes from generators seeded from ``(seed, unit)``: a unit's start and
transforms do not depend on which chunk it lands in, so chunking does not change results.
The model is left as found: weights frozen only for the call, modes restored, no hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any, Literal

import numpy as np
import torch
from torch import fx, nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import LayerIndex, layer_index, preserved_state
from cnnviz.optvis import objectives as obj
from cnnviz.optvis.checkpoint import RenderCheckpoint
from cnnviz.optvis.chunking import MemoryEstimate, estimate_memory, plan_chunks
from cnnviz.optvis.param import ImageParam, make_param
from cnnviz.optvis.stepgraph import step_graphs
from cnnviz.optvis.transform import Compose, Resize, Transform, standard_transforms
from cnnviz.precision import PRECISIONS, Numerics, Precision, resolve_precision

__all__ = [
    "MemoryPlan",
    "RenderResult",
    "RenderSettings",
    "StepReport",
    "check_objective",
    "plan_memory",
    "preview_bytes",
    "visualize",
]

_MIB = 1 << 20
DEFAULT_MEMORY_BUDGET_MB = 1024
# Random streams drawn per unit from (seed, unit, stream).
_INIT_STREAM = 0
_TRANSFORM_STREAM = 1


@dataclass(frozen=True)
class RenderSettings:
    """How to optimize. The defaults give readable patterns (Lucid's recipe).

    - ``steps``, ``lr``: Adam steps and learning rate (Lucid: 512 steps at 0.05; 256 already
      converge on small models and mid layers).
    - ``image_size``: side of the optimized image; ``None``: the model's input size; smaller
      images are upsampled to the input size.
    - ``param``: ``"fourier"`` (1/f-scaled spectrum, smooth) or ``"pixel"``;
      ``decorrelate``: optimize in decorrelated colour space (3-channel models).
    - ``transforms``: ``"standard"`` (pad, jitter, scale, rotate, jitter) or ``"none"``.
    - ``redirect_relu_steps``: redirect ReLU gradients during the first N steps, so units
      that start inactive get a gradient (0: off). Lucid redirects for the whole run; once
      a unit is alive the redirected gradient equals the plain one, so a short window gives
      the same images for less work (all 32 channels of ``shapes`` ``block2.relu``: identical
      with 16 and 256 redirected steps). Needs an FX-traceable model; models
      served through the hook fallback run without it.
    - ``memory_budget_mb``: bound on what one chunk's step allocates (activations saved for
      backward and their gradients, parameters and Adam state; on CPU also the result
      images), not counting the model's weights.
    - ``seed``: every random number of the run derives from it.
    - ``l1``, ``l2``, ``tv``: weights of penalties on the image, added to the objective;
      ``diversity``: weight of the diversity term on the objective's first layer.
    - ``precision``: the model's forward and backward in ``"fp32"``, ``"bf16"`` or ``"fp16"``
      autocast, or ``"auto"``: bf16 on a CPU where bf16 is faster than fp32 and on CUDA
      devices that have it, fp16 (with a gradient scaler) on older CUDA devices, fp32
      elsewhere; channels-last input on CPU and CUDA (see :mod:`cnnviz.precision`). The image
      parameters, Adam's state and every reported objective value stay fp32; the final and
      initial objectives are evaluated in fp32 whatever the precision. The precision used is
      in the result.
    """

    steps: int = 256
    lr: float = 0.05
    image_size: int | None = None
    param: Literal["fourier", "pixel"] = "fourier"
    decorrelate: bool = True
    transforms: Literal["standard", "none"] = "standard"
    redirect_relu_steps: int = 16
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    seed: int = 0
    l1: float = 0.0
    l2: float = 0.0
    tv: float = 0.0
    diversity: float = 0.0
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.image_size is None or self.image_size >= 8, "image_size must be at least 8"),
            (self.param in ("fourier", "pixel"), "param must be 'fourier' or 'pixel'"),
            (self.transforms in ("standard", "none"), "transforms must be 'standard' or 'none'"),
            (self.redirect_relu_steps >= 0, "redirect_relu_steps must be >= 0"),
            (self.memory_budget_mb >= 1, "memory_budget_mb must be at least 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        checks += [
            (math.isfinite(w) and w >= 0, f"{name} must be a finite weight >= 0")
            for name, w in (("l1", self.l1), ("l2", self.l2), ("tv", self.tv))
        ]
        checks.append((math.isfinite(self.diversity) and self.diversity >= 0, "bad diversity"))
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"{message}; got settings {self}")


def device_memory_budget_mb(device: torch.device | str) -> int:
    """A memory budget that suits ``device``: ``DEFAULT_MEMORY_BUDGET_MB``, and on a CUDA
    device a quarter of its memory where that is more (35 GiB on a 141 GB card), so a whole
    layer runs on a large GPU in one or a few chunks that keep it busy, rather than in many
    that each leave it idle. From the card's size, not from what is free at the moment, so a
    job resumed from a checkpoint on the same kind of card is cut into the same chunks."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MEMORY_BUDGET_MB
    total = torch.cuda.get_device_properties(device).total_memory
    return max(DEFAULT_MEMORY_BUDGET_MB, total // 4 // _MIB)


def _no_preview(max_images: int | None, max_side: int | None) -> torch.Tensor:
    raise RuntimeError("this report carries no preview")


@dataclass(frozen=True)
class StepReport:
    """Progress after one optimization step.

    ``step`` counts from 1 over the whole job, ``total`` is ``steps × n_chunks`` (chunks run
    one after another). ``objectives`` has one value per unit: the latest known value of the
    unit's own objective (without penalties) — from the current step (under its random
    transforms) for the chunk being optimized, the final value for finished chunks, the
    starting value for chunks not yet started.
    """

    step: int
    total: int
    _objectives: Callable[[], list[float]] = field(repr=False, compare=False)
    chunk: int = 0
    n_chunks: int = 1
    _preview: Callable[[int | None, int | None], torch.Tensor] = field(
        default=_no_preview, repr=False, compare=False
    )

    @cached_property
    def objectives(self) -> list[float]:
        """Read from the device on first use: a copy to the host waits for the step's
        kernels, so a render whose reports go unread keeps the device busy between steps."""
        return self._objectives()

    def preview(self, max_images: int | None = None, max_side: int | None = None) -> torch.Tensor:
        """Images of the units as they are now: ``(n, C, h, w)`` float32 in [0, 1], CPU.

        The first ``max_images`` units (default: all N), each shrunk by area averaging so
        its longer side is at most ``max_side`` (default: as they are). Computed on call
        (cheap to skip), for those units only: what it allocates is ``n × C × S × S`` floats
        and its shrunk copy, however many units the render has. Units of chunks not yet
        started show their start.
        """
        return self._preview(max_images, max_side)


@dataclass(frozen=True)
class RenderResult:
    """What a render produced: one image per unit, in the objective's unit order.

    ``images``: ``(N, C, S, S)`` float32 in [0, 1] on CPU (``(N, C, H, W)`` of the model's
    input when ``image_size`` is ``None``). ``objectives`` and ``initial_objectives``: each
    unit's own objective (penalties excluded) for the final image and for the starting noise,
    both evaluated without random transforms, resized to the model's input, in fp32.
    ``precision`` is the one the optimization ran in (``settings.precision`` resolved for the
    device: ``"fp32"``, ``"bf16"`` or ``"fp16"``), ``channels_last`` its input layout.
    """

    images: torch.Tensor
    objectives: list[float]
    initial_objectives: list[float]
    settings: RenderSettings
    n_chunks: int = 1
    chunk_size: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False


def _generator(seed: int, unit: int, stream: int) -> torch.Generator:
    """A CPU generator for one unit's random stream, independent of every other unit's."""
    state = np.random.SeedSequence([seed, unit, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _check_input(
    input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> tuple[int, int, int]:
    if len(input_shape) != 3 or input_shape[0] not in (1, 3) or min(input_shape[1:]) < 1:
        raise InvalidArgumentError(
            f"input_shape must be (C, H, W) with C 1 or 3, got {tuple(input_shape)}"
        )
    channels = input_shape[0]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise InvalidArgumentError(
            f"mean and std need {channels} values (std > 0) for a {channels}-channel model, "
            f"got mean={list(mean)} std={list(std)}"
        )
    return channels, input_shape[1], input_shape[2]


def check_objective(
    model: nn.Module,
    objective: obj.Objective,
    input_shape: tuple[int, int, int],
    model_name: str = "model",
) -> None:
    """Validate ``objective`` against ``model`` without optimizing anything.

    Raises ``UnknownLayerError`` for a layer the model lacks, ``InvalidArgumentError`` for a
    unit out of range (the message names the valid range), ``LayerShapeError`` for a layer of
    the wrong kind. Costs one forward pass of zeros per model, the first time (cached).
    """
    _check_input(input_shape, [0.0] * input_shape[0], [1.0] * input_shape[0])
    objective.validate(layer_index(model, input_shape, model_name))


def _with_settings_terms(objective: obj.Objective, settings: RenderSettings) -> obj.Objective:
    """``objective`` plus the penalties and diversity that ``settings`` asks for."""
    extra = []
    if settings.l1 > 0:
        extra.append(obj.l1(settings.l1))
    if settings.l2 > 0:
        extra.append(obj.l2(settings.l2))
    if settings.tv > 0:
        extra.append(obj.total_variation(settings.tv))
    if settings.diversity > 0:
        if not objective.layers:
            raise InvalidArgumentError("diversity needs an objective that reads a layer")
        extra.append(obj.diversity(objective.layers[0], settings.diversity))
    return sum(extra, objective)


class _Forward:
    """Normalise, run the truncated model, and return ``{layer: activations}`` in fp32.

    Holds the extractor for the objective's layers; for the steps, a copy of its graph with
    the batch norms folded into the convolutions; when asked, a copy of what
    the steps run with redirected ReLU gradients; and the :class:`Numerics` they run in.
    Exact evaluations run the plain extractor in fp32. Built inside :func:`preserved_state`.
    """

    def __init__(
        self,
        index: LayerIndex,
        layers: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        redirect: bool,
        numerics: Numerics,
    ) -> None:
        self._keys = {name: index.node(name) for name in layers}
        self._plain = index.extractor(list(layers)) if layers else None
        if isinstance(self._plain, nn.Module):
            self._plain.eval()
        # What the optimization steps run: the graph with batch norms folded (exact
        # evaluations keep the plain graph, see cnnviz.optvis.fold).
        self._steps = self._plain
        self._redirected = None
        if isinstance(self._plain, fx.GraphModule):
            graphs = step_graphs(self._plain, redirect)
            self._steps, self._redirected = graphs.folded, graphs.redirected
        param = next(index.model.parameters(), None)
        self._dtype = param.dtype if param is not None else torch.float32
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.numerics = numerics

    def __call__(
        self, x: torch.Tensor, redirect: bool = False, exact: bool = False
    ) -> dict[str, torch.Tensor]:
        """``x``: ``(n, C, H, W)`` in [0, 1] at the model's input size. ``exact``: in fp32
        with a contiguous input, whatever the numerics."""
        if self._plain is None or self._steps is None:
            return {}
        x = ((x - self._mean) / self._std).to(self._dtype)
        run = self._redirected if redirect and self._redirected is not None else self._steps
        if exact:
            run = self._plain
        numerics = self.numerics.exact() if exact else self.numerics
        out = numerics.run(run, x)
        return {name: out[key] for name, key in self._keys.items()}

    def check_layout(self, input_shape: tuple[int, int, int]) -> None:
        """Drop channels-last for a model that cannot take it (a ``.view`` of an activation
        that channels-last made non-contiguous), found by one forward of two images (a
        batch of one may come out contiguous)."""
        if not self.numerics.channels_last or self._plain is None:
            return
        x = torch.zeros((2, *input_shape), device=self._mean.device)
        try:
            with torch.no_grad():
                self(x)
        except RuntimeError:
            self.numerics = self.numerics.without_channels_last()


@dataclass
class _Job:
    """Everything one render needs, fixed before the first step."""

    objective: obj.Objective
    settings: RenderSettings
    param: ImageParam
    transform: Transform
    clean: Transform  # resize only: how final and initial images are evaluated
    forward: _Forward
    device: torch.device
    groups: list[int]

    def init_raw(self, units: Sequence[int]) -> torch.Tensor:
        """Starting parameters of ``units``: ``(n, *raw_shape)`` on the device."""
        seed = self.settings.seed
        raw = [self.param.init(_generator(seed, u, _INIT_STREAM)) for u in units]
        return torch.stack(raw).to(self.device)

    def transform_params(self, units: Sequence[int]) -> torch.Tensor:
        """Every step's transform parameters of ``units``: ``(steps, n, k)`` on the device."""
        seed, steps = self.settings.seed, self.settings.steps
        drawn = [self.transform.draw(_generator(seed, u, _TRANSFORM_STREAM), steps) for u in units]
        return torch.stack(drawn, dim=1).to(self.device)

    def rows(self, units: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit index and diversity group of each row of a chunk: two ``(n,)`` int64 tensors."""
        unit_t = torch.tensor(units, dtype=torch.long, device=self.device)
        group_t = torch.tensor(
            [self.groups[u] for u in units], dtype=torch.long, device=self.device
        )
        return unit_t, group_t

    def batch(
        self,
        images: torch.Tensor,
        x: torch.Tensor,
        rows: tuple[torch.Tensor, torch.Tensor],
        redirect: bool,
        exact: bool = False,
    ) -> obj.Batch:
        """What the objective sees: ``images`` before transforms, ``x`` the model's input."""
        return obj.Batch(images, self.forward(x, redirect, exact), *rows)

    def evaluate(self, raw: torch.Tensor, units: Sequence[int]) -> list[float]:
        """The units' own objective for images ``raw``, without random transforms, in fp32."""
        with torch.no_grad():
            images = self.param.images(raw)
            x = self.clean(images, images.new_empty((len(units), 0)))
            batch = self.batch(images, x, self.rows(units), redirect=False, exact=True)
            own, _ = self.objective(batch)
        return [float(v) for v in own.float().cpu().tolist()]


def _build_job(
    model: nn.Module,
    objective: obj.Objective,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: RenderSettings,
    device: torch.device,
    model_name: str,
) -> _Job:
    channels, height, width = _check_input(input_shape, mean, std)
    index = layer_index(model, input_shape, model_name)
    objective.validate(index)
    side = settings.image_size
    size = (side, side) if side is not None else (height, width)
    param = make_param(
        settings.param, channels, size, decorrelate=settings.decorrelate, device=device
    )
    clean = Compose([Resize((height, width))])
    transform = (
        standard_transforms(size, (height, width)) if settings.transforms == "standard" else clean
    )
    forward = _Forward(
        index,
        objective.layers,
        mean,
        std,
        device,
        redirect=settings.redirect_relu_steps > 0,
        numerics=resolve_precision(settings.precision, device),
    )
    forward.check_layout(input_shape)
    return _Job(objective, settings, param, transform, clean, forward, device, objective.groups())


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


def visualize(
    model: nn.Module,
    objective: obj.Objective,
    *,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: RenderSettings = RenderSettings(),
    device: torch.device | str = "cpu",
    on_step: Callable[[StepReport], None] | None = None,
    model_name: str = "model",
    resume: RenderCheckpoint | None = None,
    on_checkpoint: Callable[[RenderCheckpoint], None] | None = None,
    checkpoint_every: int = 0,
    checkpoint_due: Callable[[], bool] | None = None,
    reserve_bytes: int = 0,
) -> RenderResult:
    """Optimize one image per unit of ``objective`` so the unit's objective is maximal.

    ``model`` must already be on ``device``; ``input_shape`` is the ``(C, H, W)`` it expects
    (C is 1 or 3), and ``mean``/``std`` its normalisation of ``[0, 1]`` input. The returned
    images are ``(N, C, S, S)`` float32 in [0, 1] on CPU, N = ``objective.n_units``.

    ``on_step`` is called after every step; an exception it raises (a cancellation) stops
    the render and propagates, with the model restored. Deterministic for a seed on CPU.
    Raises the core errors (``UnknownLayerError``, ``InvalidArgumentError``,
    ``LayerShapeError``) before any optimization step.

    Every ``checkpoint_every`` steps (counted over the whole render; 0: never)
    ``on_checkpoint`` gets a :class:`~cnnviz.optvis.checkpoint.RenderCheckpoint`; the same
    call with ``resume=`` that checkpoint goes on from there and returns what an
    uninterrupted render would have (on CPU, exactly). ``checkpoint_due`` (optional) is asked
    first, so that a caller that keeps checkpoints less often pays nothing for the others.

    ``reserve_bytes``: memory the caller holds beside the render while it runs (the preview
    pictures it makes in ``on_step``); on CPU it shares the budget with the chunks, as the
    result images do, so fewer images go in one chunk.
    """
    device = torch.device(device)
    objective = _with_settings_terms(objective, settings)
    with preserved_state(model, frozen=True):
        job = _build_job(model, objective, input_shape, mean, std, settings, device, model_name)
        n_units = objective.n_units
        chunk_size = _chunk_size(job, n_units, model, reserve_bytes)
        chunks = plan_chunks(job.groups, chunk_size, keep_groups=objective.couples_units)
        return _render(
            job,
            chunks,
            on_step,
            chunk_size,
            resume,
            on_checkpoint,
            checkpoint_every,
            checkpoint_due,
        )


def _render(
    job: _Job,
    chunks: list[list[int]],
    on_step: Callable[[StepReport], None] | None,
    chunk_size: int,
    resume: RenderCheckpoint | None = None,
    on_checkpoint: Callable[[RenderCheckpoint], None] | None = None,
    checkpoint_every: int = 0,
    checkpoint_due: Callable[[], bool] | None = None,
) -> RenderResult:
    settings = job.settings
    n_units = job.objective.n_units
    images = torch.empty((n_units, job.param.channels, *job.param.size))
    first_chunk, first_step = 0, 0
    if resume is None:
        initial = [0.0] * n_units
        for units in chunks:
            for unit, value in zip(units, job.evaluate(job.init_raw(units), units), strict=True):
                initial[unit] = value
        latest = list(initial)
        final = list(initial)
    else:
        _check_resume(resume, job, chunks)
        first_chunk, first_step = resume.chunk, resume.step
        images.copy_(resume.images)
        initial, final, latest = list(resume.initial), list(resume.final), list(resume.latest)
        torch.set_rng_state(resume.rng)
    done: set[int] = set(range(first_chunk))  # chunk indices whose images are final
    total_steps = settings.steps * len(chunks)

    for k in range(first_chunk, len(chunks)):
        units = chunks[k]
        before = tuple(latest)  # the other chunks' values while this one runs
        resuming = resume is not None and k == first_chunk
        start = first_step if resuming else 0
        raw = resume.raw.to(job.device) if resume and resuming else job.init_raw(units)
        raw.requires_grad_(True)
        params = job.transform_params(units)
        rows = job.rows(units)
        optimizer = torch.optim.Adam([raw], lr=settings.lr)
        scaler = job.forward.numerics.scaler()  # fp16: keeps small gradients from underflow
        if resume is not None and resuming:
            optimizer.load_state_dict(resume.optimizer)
            if resume.scaler:
                scaler.load_state_dict(resume.scaler)

        def preview(
            max_images: int | None, max_side: int | None, k: int = k, raw: torch.Tensor = raw
        ) -> torch.Tensor:
            return _preview(job, chunks, images, done, k, raw, max_images, max_side)

        for step in range(start, settings.steps):
            current = job.param.images(raw)
            x = job.transform(current, params[step])
            redirect = step < settings.redirect_relu_steps
            own, total = job.objective(job.batch(current, x, rows, redirect))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(-total.sum()).backward()
            scaler.step(optimizer)
            scaler.update()
            if on_step is not None:
                report = StepReport(
                    step=k * settings.steps + step + 1,
                    total=total_steps,
                    _objectives=partial(_with_current, before, units, own.detach()),
                    chunk=k,
                    n_chunks=len(chunks),
                    _preview=preview,
                )
                on_step(report)
            global_step = k * settings.steps + step + 1
            if (
                on_checkpoint is not None
                and checkpoint_every
                and global_step % checkpoint_every == 0
                and (checkpoint_due is None or checkpoint_due())
            ):
                on_checkpoint(
                    RenderCheckpoint(
                        chunk=k,
                        step=step + 1,
                        raw=raw.detach().cpu().clone(),
                        optimizer=_on_cpu(optimizer.state_dict()),
                        images=images.clone(),
                        initial=list(initial),
                        final=list(final),
                        latest=list(latest),
                        rng=torch.get_rng_state(),
                        scaler=scaler.state_dict(),
                    )
                )

        raw = raw.detach()
        with torch.no_grad():
            images[units] = job.param.images(raw).float().cpu()
        for unit, value in zip(units, job.evaluate(raw, units), strict=True):
            final[unit] = value
            latest[unit] = value
        done.add(k)

    return RenderResult(
        images=images,
        objectives=final,
        initial_objectives=initial,
        settings=settings,
        n_chunks=len(chunks),
        chunk_size=chunk_size,
        precision=job.forward.numerics.precision,
        channels_last=job.forward.numerics.channels_last,
    )


def _with_current(others: tuple[float, ...], units: list[int], own: torch.Tensor) -> list[float]:
    """Every unit's value: ``others``, with those of ``units`` replaced by this step's
    ``own``."""
    values = list(others)
    for unit, value in zip(units, own.float().cpu().tolist(), strict=True):
        values[unit] = value
    return values


def _on_cpu(state: Any) -> Any:
    """An optimizer's state dict with every tensor copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {key: _on_cpu(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_on_cpu(value) for value in state]
    return state


def _check_resume(resume: RenderCheckpoint, job: _Job, chunks: list[list[int]]) -> None:
    """A checkpoint of another render (other units, sizes or steps) is an error, not a guess."""
    n_units = job.objective.n_units
    ok = (
        0 <= resume.chunk < len(chunks)
        and 0 <= resume.step <= job.settings.steps
        and tuple(resume.raw.shape) == (len(chunks[resume.chunk]), *job.param.raw_shape)
        and tuple(resume.images.shape) == (n_units, job.param.channels, *job.param.size)
        and len(resume.initial) == len(resume.final) == len(resume.latest) == n_units
    )
    if not ok:
        raise InvalidArgumentError(
            f"the checkpoint (chunk {resume.chunk}, step {resume.step}, parameters "
            f"{tuple(resume.raw.shape)}) is not one of this render ({len(chunks)} chunks of "
            f"{job.settings.steps} steps, {n_units} units)"
        )


_PREVIEW_PIECE = 8  # full-size images a preview holds at a time, before shrinking them


def _preview(
    job: _Job,
    chunks: list[list[int]],
    images: torch.Tensor,
    done: set[int],
    current: int,
    raw: torch.Tensor,
    max_images: int | None,
    max_side: int | None,
) -> torch.Tensor:
    """The first ``max_images`` units now (finished chunks final, the current one live,
    others' start), shrunk to ``max_side``. Only those units are computed, a few at a time,
    so the full-size images never exist all at once."""
    count = images.shape[0] if max_images is None else max(0, min(max_images, images.shape[0]))
    height, width = _shrunk_size(images.shape[-2], images.shape[-1], max_side)
    out = images.new_empty((count, images.shape[1], height, width))
    with torch.no_grad():
        for k, units in enumerate(chunks):
            # Chunks of grouped units (diversity) need not be consecutive runs.
            rows = [i for i, unit in enumerate(units) if unit < count]
            for start in range(0, len(rows), _PREVIEW_PIECE):
                piece = rows[start : start + _PREVIEW_PIECE]
                wanted = [units[i] for i in piece]
                if k in done:
                    pictures = images[wanted]
                else:
                    source = raw.detach()[piece] if k == current else job.init_raw(wanted)
                    pictures = job.param.images(source).float().cpu()
                out[wanted] = _shrink(pictures, (height, width))
    return out


def preview_bytes(channels: int, side: int, max_images: int, max_side: int | None) -> int:
    """At most what :meth:`StepReport.preview` allocates for ``max_images`` images of
    ``channels × side × side``: a few full-size images at a time (and the parameterization's
    work on them: a Fourier spectrum is about twice the image), and the shrunk result."""
    height, width = _shrunk_size(side, side, max_side)
    piece = min(max_images, _PREVIEW_PIECE) * channels * side * side * 4 * 3
    return piece + max_images * channels * height * width * 4


def _shrunk_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def _shrink(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, C, H, W)`` resized to ``size`` by area averaging (as they are when equal)."""
    if tuple(images.shape[-2:]) == size or images.shape[0] == 0:
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="area")
