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

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any, Literal

import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import preserved_state
from cnnviz.optvis import objectives as obj
from cnnviz.optvis.checkpoint import RenderCheckpoint
from cnnviz.optvis.chunking import plan_chunks
from cnnviz.optvis.compiled import compile_in_background
from cnnviz.optvis.job import (
    _build_job,
    _Job,
    _with_settings_terms,
    check_objective,
)
from cnnviz.optvis.planning import MemoryPlan, _chunk_size, plan_memory
from cnnviz.optvis.preview import _no_preview, _preview, preview_bytes
from cnnviz.optvis.settings import DEFAULT_MEMORY_BUDGET_MB, RenderSettings, device_memory_budget_mb

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB",
    "MemoryPlan",
    "RenderResult",
    "RenderSettings",
    "StepReport",
    "check_objective",
    "device_memory_budget_mb",
    "plan_memory",
    "precompile",
    "preview_bytes",
    "visualize",
]


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
    device: ``"fp32"``, ``"bf16"`` or ``"fp16"``), ``channels_last`` its input layout,
    ``compiled`` whether its steps ran the compiled graph (``settings.compile`` where the
    model has a graph to compile; models served through hooks run eagerly).
    """

    images: torch.Tensor
    objectives: list[float]
    initial_objectives: list[float]
    settings: RenderSettings
    n_chunks: int = 1
    chunk_size: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compiled: bool = False


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


def precompile(
    model: nn.Module,
    objective: obj.Objective,
    *,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    settings: RenderSettings = RenderSettings(),
    device: torch.device | str = "cpu",
    model_name: str = "model",
    on_done: Callable[[BaseException | None], None] | None = None,
) -> threading.Thread | None:
    """Compile, on a background thread, the step that :func:`visualize` with the same
    arguments and ``settings.compile`` runs, so that such renders find it ready; returns
    the thread, or None where the step is ready or being compiled (or has no graph to
    compile). ``on_done`` gets None, or the exception of a compile that failed.

    The model's weights must be frozen (``requires_grad_(False)``, as the service loads
    models): the thread runs them beside the caller, which therefore cannot freeze them for
    it, and a graph compiled for weights that take gradients does not serve a render, which
    freezes them (InvalidArgumentError otherwise).
    """
    if any(p.requires_grad for p in model.parameters()):
        raise InvalidArgumentError(
            "precompile needs a model with frozen weights: call model.requires_grad_(False)"
        )
    device = torch.device(device)
    objective = _with_settings_terms(objective, settings)
    with preserved_state(model, frozen=True):
        job = _build_job(
            model,
            objective,
            input_shape,
            mean,
            std,
            replace(settings, compile=True),
            device,
            model_name,
        )
    graph = job.forward.step_graph
    if graph is None:
        return None
    return compile_in_background(graph, job.forward.numerics, input_shape, on_done)


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
            own, total = job.objective(job.batch(current, x, rows, redirect, step=True))
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
        compiled=job.forward.compiled,
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
