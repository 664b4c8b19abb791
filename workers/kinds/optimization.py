"""The optimization kind: from noise, the images that units of a layer respond to most."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import safetensors.torch
import torch

from cnnviz.errors import CnnvizError, InvalidArgumentError
from cnnviz.models import LoadedModel
from cnnviz.optvis import (
    RenderCheckpoint,
    RenderResult,
    RenderSettings,
    StepReport,
    check_objective,
    device_memory_budget_mb,
    objectives,
    precompile,
    visualize,
)
from cnnviz.optvis.objectives import Objective
from schemas.jobs import JobRead, Progress, result_png_path, unit_png_path
from schemas.objectives import OBJECTIVES
from schemas.optimization import (
    MAX_UNITS,
    MIN_IMAGE_SIZE,
    ROUTE,
    ObjectiveKind,
    OptimizationCreate,
    OptimizationResult,
)
from workers.compile import CompilePolicy
from workers.kinds.base import JobContext, OneShardJobKind, Reference, Resources, ResultPictures
from workers.kinds.caricature import caricature_objective, fetched, kept
from workers.kinds.optimization_limits import admit
from workers.kinds.optimization_pictures import (
    RAW_MAX_BYTES,
    b64,
    encode_tiles,
    pixels,
    preview_png,
    preview_reserve,
    unit_results,
)
from workers.kinds.optimization_versus import FIELD, KINDS, dataset_scores, versus
from workers.kinds.registry import register_kind

__all__ = ["RAW_IMAGES", "Optimization", "build_objective", "optimize", "prepare"]

log = logging.getLogger(__name__)

RAW_IMAGES = "images"
"""The name of the optimized images in a job's raw tensors."""


def _units(request: OptimizationCreate, loaded: LoadedModel) -> list[int]:
    """The channel (or class) indices of a request, 'all' resolved against the layer."""
    if isinstance(request.channels, list):
        return list(request.channels)
    count = loaded.index.usable([request.layer])[0].units or 0  # AmbiguousAxesError
    if count * request.images_per_unit > MAX_UNITS:
        raise InvalidArgumentError(
            f"layer {request.layer!r} of model {loaded.spec.name!r} has {count} channels, "
            f"{count * request.images_per_unit} images at {request.images_per_unit} per unit, "
            f"and a job optimizes at most {MAX_UNITS} units; list the channels you want in "
            "`channels` or lower `images_per_unit`"
        )
    return list(range(count))


Builder = Callable[[OptimizationCreate, list[int], int, LoadedModel], Objective]


def _neuron(request: OptimizationCreate, rows: list[int], copies: int, _: LoadedModel) -> Objective:
    assert request.neuron is not None  # the schema enforces it
    n = request.neuron
    return objectives.neuron(request.layer, [n.channel] * copies, y=n.y, x=n.x)


def _direction(
    request: OptimizationCreate, rows: list[int], copies: int, _: LoadedModel
) -> Objective:
    assert request.direction is not None  # the schema enforces it
    return objectives.direction(request.layer, torch.tensor([request.direction] * copies))


# Each objective's terms from a resolved request: ``rows`` are the channels, each repeated
# ``copies`` (images_per_unit) times, for the objectives whose units are channels.
_BUILDERS: dict[ObjectiveKind, Builder] = {
    ObjectiveKind.CHANNEL: lambda request, rows, *_: objectives.channel(request.layer, rows),
    ObjectiveKind.CLASS_LOGIT: lambda request, rows, *_: objectives.class_logit(
        request.layer, rows
    ),
    ObjectiveKind.NEURON: _neuron,
    ObjectiveKind.DIRECTION: _direction,
    ObjectiveKind.LAYER: lambda request, *_: objectives.layer(request.layer),
    ObjectiveKind.CARICATURE: lambda request, _, __, loaded: caricature_objective(request, loaded),
}


def build_objective(request: OptimizationCreate, loaded: LoadedModel) -> Objective:
    """The optvis objective of a resolved request (``channels`` a list) on ``loaded``."""
    kind = request.objective or ObjectiveKind.CHANNEL
    copies = request.images_per_unit
    # Each unit repeated images_per_unit times, next to each other: unit u, image k is row
    # u * copies + k, which is how _unit_results reads them back.
    channels = request.channels if isinstance(request.channels, list) else []
    rows = [c for c in channels for _ in range(copies)]
    return _BUILDERS[kind](request, rows, copies, loaded)


def prepare(request: OptimizationCreate, loaded: LoadedModel) -> OptimizationCreate:
    """The request with 'all' and the default image size resolved, checked against the model.

    Raises UnknownLayerError, LayerShapeError or InvalidArgumentError, so a bad request is
    refused before it is queued. Cheap: no optimization step runs.
    """
    channels: list[int] | None = None
    if OBJECTIVES[request.objective or ObjectiveKind.CHANNEL].per_channel:
        channels = _units(request, loaded)
    else:
        loaded.index.resolve([request.layer])
    # A model smaller than the smallest image optimizes a larger one, resized to its input.
    size = request.image_size or max(MIN_IMAGE_SIZE, *loaded.spec.input_size)
    resolved = request.model_copy(
        update={"channels": channels if channels is not None else "all", "image_size": size}
    )
    check_objective(
        loaded.module, build_objective(resolved, loaded), loaded.spec.input_shape, loaded.spec.name
    )
    return resolved


def render_settings(
    request: OptimizationCreate, device: torch.device, budget_mb: int | None = None
) -> RenderSettings:
    """The render's settings for ``request`` on ``device``, with that device's memory budget
    (or ``budget_mb``: the budget of the device that will run it)."""
    return RenderSettings(
        memory_budget_mb=budget_mb or device_memory_budget_mb(device),
        steps=request.steps,
        lr=request.lr,
        image_size=request.image_size,
        param=request.param,
        decorrelate=request.decorrelate,
        transforms=request.transforms,
        seed=request.seed,
        redirect_relu_steps=request.redirect_relu_steps,
        l1=request.l1,
        l2=request.l2,
        tv=request.tv,
        diversity=request.diversity,
        precision=request.precision,
        compile=bool(request.compile),
    )


def _compile_beside(
    request: OptimizationCreate, loaded: LoadedModel, policy: CompilePolicy
) -> threading.Thread | None:
    """Start compiling the step of this job's shapes on a background thread; the policy
    marks it warm when done."""

    def done(error: BaseException | None) -> None:
        if error is None:
            policy.mark_warm(loaded, request.layer, request.precision)

    return precompile(
        loaded.module,
        build_objective(request, loaded),
        input_shape=loaded.spec.input_shape,
        mean=loaded.spec.mean,
        std=loaded.spec.std,
        settings=render_settings(request, loaded.device),
        device=loaded.device,
        model_name=loaded.spec.name,
        on_done=done,
    )


def warm_up(resources: Resources, pairs: Sequence[tuple[str, str]]) -> threading.Thread | None:
    """Compile, on a background thread, the steps of default jobs of these ``(model,
    layer)`` pairs (``CNNVIZ_COMPILE_WARMUP``), so that the jobs of those shapes find them in
    the cache; a pair that is not a model's layer is logged and skipped. None: nothing to do
    (no pairs, or compiling off)."""
    if resources.compile.mode == "off" or not pairs:
        return None
    thread = threading.Thread(
        target=_warm_up, args=(resources, pairs), name="cnnviz-compile-warmup", daemon=True
    )
    thread.start()
    return thread


def _warm_up(resources: Resources, pairs: Sequence[tuple[str, str]]) -> None:
    policy = resources.compile
    for model, layer in pairs:
        try:
            loaded = resources.model(model)
            request = prepare(OptimizationCreate(layer=layer, channels=[0]), loaded)
        except (CnnvizError, ValueError) as exc:
            log.warning("compile warm-up of %s:%s skipped: %s", model, layer, exc)
            continue
        if not policy.is_warm(loaded, layer, request.precision):
            thread = _compile_beside(request, loaded, policy)
            if thread is not None:
                thread.join()  # one at a time: compiling takes every core it gets


def _attach_images(images: torch.Tensor, context: JobContext) -> None:
    """Keep the optimized images ``(N, C, S, S)`` float32 in [0, 1], unless too large."""
    size = images.numel() * 4
    if size > RAW_MAX_BYTES:
        log.info(
            "raw images not kept: %.1f MiB, over the %d MiB limit",
            size / 2**20,
            RAW_MAX_BYTES // 2**20,
        )
        return
    tensor = images.detach().to("cpu", torch.float32).contiguous()
    context.attach(safetensors.torch.save({RAW_IMAGES: tensor}))


def _checkpoint(context: JobContext) -> RenderCheckpoint | None:
    """The state an earlier attempt of the job saved, to resume from; None: start afresh."""
    if context.resume is None:
        return None
    try:
        state = RenderCheckpoint.from_bytes(context.resume)
    except InvalidArgumentError as exc:
        log.warning("job %s: checkpoint unreadable (%s); starting from step 0", context.job_id, exc)
        return None
    log.info("job %s: resuming from step %d of chunk %d", context.job_id, state.step, state.chunk)
    return state


def optimize(
    request: OptimizationCreate,
    loaded: LoadedModel,
    context: JobContext | None = None,
    policy: CompilePolicy | None = None,
) -> OptimizationResult:
    """Optimize the request's units on ``loaded``; the images and their objectives.

    ``context`` (optional) is checked after every step, so a cancel or a deadline stops the
    run, and gets progress after the first step, then at most every progress interval, and
    after the last step; a preview grid rides along at most every preview interval (the
    first 64 images, shrunk: see :mod:`workers.kinds.optimization_pictures`, whose memory
    the render's budget sets aside). It gets the render's state every
    ``context.checkpoint_steps`` steps (at most every ``checkpoint_interval_s``), and a run
    given ``context.resume`` goes on from that state to the result an uninterrupted run gives.

    ``request.compile`` says whether the steps run compiled; ``policy`` (the service's) may
    compile them beside an eager run for later jobs, and learns when they are compiled.
    """
    started = time.monotonic()
    context = context or JobContext()
    request = prepare(request, loaded)
    preview_step: int | None = None
    preview_images: int | None = None
    latest: StepReport | None = None

    def progress_of(report: StepReport) -> Progress:
        return Progress(
            step=report.step,
            total=report.total,
            objectives=[float(v) for v in report.objectives],
            preview_step=preview_step,
            preview_images=preview_images,
        )

    def on_step(report: StepReport) -> None:
        nonlocal preview_step, preview_images, latest
        latest = report
        context.check()
        last = report.step == report.total
        if not context.progress_due(last):
            return
        preview = None
        if not last and context.preview_due():
            preview, preview_images = preview_png(report, request.images_per_unit)
            preview_step = report.step
        context.report(progress_of(report), preview)

    def on_checkpoint(state: RenderCheckpoint) -> None:
        context.save_checkpoint(state.to_bytes())
        # The record's progress never lags its checkpoint: a restart resumes from here, and a
        # client polling across it must not see the job go back.
        if latest is not None:
            context.report(progress_of(latest))

    objective = build_objective(request, loaded)
    assert request.image_size is not None
    reserve = preview_reserve(
        objective.n_units, request.images_per_unit, loaded.spec.channels, request.image_size
    )
    if context.checkpoint_steps:
        # A checkpoint copies the finished images, then serializes them: twice their bytes.
        reserve += 2 * objective.n_units * loaded.spec.channels * request.image_size**2 * 4

    def render(resume: RenderCheckpoint | None) -> RenderResult:
        return visualize(
            loaded.module,
            objective,
            # The model is fed its own input shape; render resizes the image_size image to it.
            input_shape=loaded.spec.input_shape,
            mean=loaded.spec.mean,
            std=loaded.spec.std,
            settings=render_settings(request, loaded.device),
            device=loaded.device,
            on_step=on_step,
            model_name=loaded.spec.name,
            reserve_bytes=reserve,
            resume=resume,
            on_checkpoint=on_checkpoint,
            checkpoint_every=context.checkpoint_steps,
            # Made only when due: a whole layer's state is tens of MiB to copy and serialize.
            checkpoint_due=context.checkpoint_due,
        )

    policy = policy or CompilePolicy()
    if not request.compile and policy.wants_background(loaded, request.layer, request.precision):
        _compile_beside(request, loaded, policy)
    resume = _checkpoint(context)
    try:
        rendered = render(resume)
    except InvalidArgumentError:
        if resume is None:
            raise
        # A checkpoint the render does not take (cut into other chunks, by a worker with
        # another memory budget) is refused before any step: start over.
        log.warning("job %s: checkpoint not usable; starting from step 0", context.job_id)
        rendered = render(None)
    if rendered.compiled:
        policy.mark_warm(loaded, request.layer, request.precision)
    _attach_images(rendered.images, context)
    compared = versus(request, rendered.images, loaded) if request.dataset_scores else []
    tiles = pixels(rendered.images)
    settings, precision = asdict(rendered.settings), rendered.precision
    final, initial = rendered.objectives, rendered.initial_objectives
    del rendered  # the float images, four times the pixels, are not needed past here
    # Several images of each unit: one row per unit.
    per_unit = request.images_per_unit
    grid, columns, pngs = encode_tiles(tiles, per_unit if per_unit > 1 else None)
    return OptimizationResult(
        model=loaded.spec.name,
        layer=request.layer,
        objective=request.objective or ObjectiveKind.CHANNEL,  # set by the validator; for mypy
        units=unit_results(request, pngs, final, initial, compared),
        grid=b64(grid),
        grid_columns=columns,
        image_size=request.image_size,
        seed=request.seed,
        settings=settings,
        device=str(loaded.device),
        precision=precision,
        elapsed_s=round(time.monotonic() - started, 4),
    )


@register_kind
class Optimization(OneShardJobKind[OptimizationCreate, OptimizationResult]):
    """Activation maximization: one shard, progress in optimizer steps."""

    route = ROUTE

    def prepare(
        self, request: OptimizationCreate, model: str, resources: Resources
    ) -> OptimizationCreate:
        loaded = resources.model(model)
        resolved = prepare(fetched(request, resources), loaded)
        if resolved.compile is None:  # fixed now: the record, resumes and results carry it
            compiled = resources.compile.decide(loaded, resolved.layer, resolved.precision)
            resolved = resolved.model_copy(update={"compile": compiled})
        if resources.max_job_work is not None:  # too large: a 422 now, not a failure later
            target = resources.admission
            if target is None:  # it runs here
                settings, on_cpu, note = render_settings(resolved, loaded.device), None, ""
            else:
                settings = render_settings(resolved, loaded.device, target.memory_budget_mb)
                on_cpu, note = target.device is None or target.device == "cpu", target.note()
            objective = build_objective(resolved, loaded)
            admit(resolved, loaded, objective, settings, resources.max_job_work, on_cpu, note)
        return kept(resolved, resources)  # the task names a caricature's image, not carries it

    def references(self, request: OptimizationCreate) -> dict[str, Reference]:
        if request.exemplars_job is None:
            return {}
        return {request.exemplars_job: Reference(FIELD, KINDS)}

    def link(
        self,
        request: OptimizationCreate,
        model: str,
        jobs: Mapping[str, JobRead[Any, Any]],
        resources: Resources,
    ) -> OptimizationCreate:
        scores = None
        if request.exemplars_job is not None:
            job = jobs[request.exemplars_job]
            scores = dataset_scores(request, model, job, resources.model(model))
        return request.model_copy(update={"dataset_scores": scores})

    def run(
        self, request: OptimizationCreate, model: str, resources: Resources, context: JobContext
    ) -> OptimizationResult:
        loaded = resources.model(model)
        request = fetched(request, resources)
        return optimize(request, loaded, context, resources.compile)

    def pictures(self, result: OptimizationResult) -> ResultPictures | None:
        if result.grid is None or any(unit.image is None for unit in result.units):
            return None  # a result shown without its pictures, never a stored one
        return ResultPictures([unit.image or "" for unit in result.units], result.grid)

    def present(self, result: OptimizationResult, job_id: str, inline: bool) -> OptimizationResult:
        units = [
            unit.model_copy(
                update={
                    "image_url": unit_png_path(job_id, i),
                    "image": unit.image if inline else None,
                }
            )
            for i, unit in enumerate(result.units)
        ]
        return result.model_copy(
            update={
                "units": units,
                "grid_url": result_png_path(job_id),
                "grid": result.grid if inline else None,
            }
        )
