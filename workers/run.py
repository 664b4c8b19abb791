"""The one function that runs an optimization job, whatever carries it.

Payload in (:class:`~schemas.jobs.OptimizationTask`), result out
(:class:`~schemas.jobs.OptimizationResult`); progress goes out and cancellation comes in
through callbacks. :func:`execute` wraps :func:`run_job` in the job record's life cycle
through a :class:`Recorder`, so the Celery task and the API's in-process executor run jobs
the same way and only differ in where the record lives.

This module imports ``cnnviz`` and ``schemas`` only: the service imports it for the in-process
transport and for validating a request before queueing it, and must not pull Celery in.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

import torch

from cnnviz.errors import CnnvizError, InvalidArgumentError
from cnnviz.imaging import encode_png, image_grid, to_pixels
from cnnviz.models import LoadedModel
from cnnviz.optvis import RenderSettings, StepReport, check_objective, objectives, visualize
from cnnviz.optvis.objectives import Objective
from schemas.jobs import (
    MAX_UNITS,
    JobError,
    JobStatus,
    ObjectiveKind,
    OptimizationCreate,
    OptimizationResult,
    OptimizationTask,
    Progress,
    UnitResult,
)

__all__ = [
    "JobCancelled",
    "JobTimedOut",
    "ProgressCallback",
    "Recorder",
    "execute",
    "prepare",
    "run_job",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress, bytes | None], None]
"""``(progress, preview_png_or_None)``; a preview PNG comes at most every preview interval."""


class JobCancelled(Exception):
    """Raised between steps when the job was asked to stop."""


class JobTimedOut(Exception):
    """Raised between steps when the job ran past its soft time limit."""


# ---- Validation, before queueing and again in the worker -------------------------------------


def _units(request: OptimizationCreate, loaded: LoadedModel) -> list[int]:
    """The channel (or class) indices of a request, 'all' resolved against the layer."""
    if isinstance(request.channels, list):
        return list(request.channels)
    count = loaded.index.info(request.layer).shape[0]
    if count * request.images_per_unit > MAX_UNITS:
        raise InvalidArgumentError(
            f"layer {request.layer!r} of model {loaded.spec.name!r} has {count} channels, "
            f"{count * request.images_per_unit} images at {request.images_per_unit} per unit, "
            f"and a job optimizes at most {MAX_UNITS} units; list the channels you want in "
            "`channels` or lower `images_per_unit`"
        )
    return list(range(count))


def build_objective(request: OptimizationCreate) -> Objective:
    """The optvis objective of a resolved request (``channels`` a list)."""
    kind = request.objective
    copies = request.images_per_unit
    # Each unit repeated images_per_unit times, next to each other: unit u, image k is row
    # u * copies + k, which is how _unit_results reads them back.
    channels = request.channels if isinstance(request.channels, list) else []
    channels = [c for c in channels for _ in range(copies)]
    if kind == ObjectiveKind.CHANNEL:
        return objectives.channel(request.layer, channels)
    if kind == ObjectiveKind.CLASS_LOGIT:
        return objectives.class_logit(request.layer, channels)
    if kind == ObjectiveKind.NEURON:
        assert request.neuron is not None  # the schema enforces it
        n = request.neuron
        return objectives.neuron(request.layer, [n.channel] * copies, y=n.y, x=n.x)
    if kind == ObjectiveKind.DIRECTION:
        assert request.direction is not None  # the schema enforces it
        return objectives.direction(request.layer, torch.tensor([request.direction] * copies))
    return objectives.layer(request.layer)


def prepare(request: OptimizationCreate, loaded: LoadedModel) -> OptimizationCreate:
    """The request with 'all' and the default image size resolved, checked against the model.

    Raises UnknownLayerError, LayerShapeError or InvalidArgumentError, so a bad request is
    refused before it is queued. Cheap: no optimization step runs.
    """
    channels: list[int] | None = None
    if request.objective in (ObjectiveKind.CHANNEL, ObjectiveKind.CLASS_LOGIT):
        channels = _units(request, loaded)
    else:
        loaded.index.resolve([request.layer])
    size = request.image_size or max(loaded.spec.input_size)
    resolved = request.model_copy(
        update={"channels": channels if channels is not None else "all", "image_size": size}
    )
    check_objective(
        loaded.module, build_objective(resolved), loaded.spec.input_shape, loaded.spec.name
    )
    return resolved


def render_settings(request: OptimizationCreate) -> RenderSettings:
    return RenderSettings(
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
    )


# ---- Running ----------------------------------------------------------------------------------


def _png(image: torch.Tensor) -> bytes:
    """``(C, H, W)`` float32 in [0, 1] to PNG bytes."""
    return encode_png(to_pixels(image[None])[0])


def _grid_png(images: torch.Tensor, columns: int | None = None) -> tuple[bytes, int]:
    """``(N, C, S, S)`` tiled on white (default: a near-square grid): PNG bytes and columns."""
    grid, layout = image_grid(images, columns=columns)
    return encode_png(grid), layout.columns


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unit_results(
    request: OptimizationCreate, images: torch.Tensor, final: list[float], initial: list[float]
) -> list[UnitResult]:
    kind = request.objective
    units: list[UnitResult] = []
    for i in range(images.shape[0]):
        unit, sample = divmod(i, request.images_per_unit)
        channel: int | None = None
        y = x = None
        if kind in (ObjectiveKind.CHANNEL, ObjectiveKind.CLASS_LOGIT):
            assert isinstance(request.channels, list)
            channel = request.channels[unit]
        elif kind == ObjectiveKind.NEURON and request.neuron is not None:
            channel, y, x = request.neuron.channel, request.neuron.y, request.neuron.x
        units.append(
            UnitResult(
                channel=channel,
                sample=sample,
                y=y,
                x=x,
                image=_b64(_png(images[i])),
                objective=final[i],
                initial_objective=initial[i],
            )
        )
    return units


def run_job(
    task: OptimizationTask,
    loaded: LoadedModel,
    *,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    deadline: float | None = None,
    progress_interval_s: float = 0.5,
    preview_interval_s: float = 2.0,
) -> OptimizationResult:
    """Optimize the task's units on ``loaded`` and return the images and their objectives.

    ``should_cancel`` is asked after every step (make it cheap); ``True`` raises
    :class:`JobCancelled`. ``deadline`` (a ``time.monotonic()`` value) raises
    :class:`JobTimedOut` at the first step past it. ``on_progress`` is called after the first
    step, then at most every ``progress_interval_s``, and after the last step; a preview PNG
    of all units rides along at most every ``preview_interval_s``.
    """
    started = time.monotonic()
    request = prepare(task.request, loaded)
    objective = build_objective(request)
    settings = render_settings(request)
    last_report = -math.inf
    last_preview = -math.inf
    preview_step: int | None = None

    def on_step(report: StepReport) -> None:
        nonlocal last_report, last_preview, preview_step
        if should_cancel is not None and should_cancel():
            raise JobCancelled(task.job_id)
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise JobTimedOut(task.job_id)
        last = report.step == report.total
        if on_progress is None or not (
            last or report.step == 1 or now - last_report >= progress_interval_s
        ):
            return
        preview = None
        if not last and now - last_preview >= preview_interval_s:
            preview = _grid_png(report.preview())[0]
            preview_step = report.step
            last_preview = now
        last_report = now
        progress = Progress(
            step=report.step,
            total=report.total,
            objectives=[float(v) for v in report.objectives],
            preview_step=preview_step,
        )
        on_progress(progress, preview)

    rendered = visualize(
        loaded.module,
        objective,
        # The model is fed its own input shape; render resizes the image_size image to it.
        input_shape=loaded.spec.input_shape,
        mean=loaded.spec.mean,
        std=loaded.spec.std,
        settings=settings,
        device=loaded.device,
        on_step=on_step,
        model_name=loaded.spec.name,
    )
    # Several images of each unit: one row per unit.
    per_unit = request.images_per_unit
    grid, columns = _grid_png(rendered.images, per_unit if per_unit > 1 else None)
    assert request.image_size is not None
    return OptimizationResult(
        model=task.model,
        layer=request.layer,
        objective=request.objective or ObjectiveKind.CHANNEL,  # set by the validator; for mypy
        units=_unit_results(
            request, rendered.images, rendered.objectives, rendered.initial_objectives
        ),
        grid=_b64(grid),
        grid_columns=columns,
        image_size=request.image_size,
        seed=request.seed,
        settings=asdict(rendered.settings),
        device=str(loaded.device),
        elapsed_s=round(time.monotonic() - started, 4),
    )


# ---- The job's life cycle ---------------------------------------------------------------------


class Recorder(Protocol):
    """Where a job's record lives, seen from whatever runs the job.

    Every write after :meth:`start` carries the attempt number it returned; a write from an
    attempt that is no longer the current one (a redelivered job's first run) is ignored, and
    a finished record is never written again: that is what makes a result exactly-once.
    """

    def start(self, job_id: str) -> int | None:
        """Mark the job running; its attempt number, or None when it must not run."""

    def progress(
        self, job_id: str, attempt: int, progress: Progress, preview: bytes | None
    ) -> None:
        """Record progress (and a preview PNG) of the current attempt."""

    def should_stop(self, job_id: str, attempt: int) -> bool:
        """Whether cancel was asked for, or this attempt was superseded; called every step."""

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        result: OptimizationResult | None,
        error: JobError | None,
        ttl_seconds: int,
    ) -> bool:
        """Write the final state once; False when another write got there first."""


def execute(
    task: OptimizationTask,
    load: Callable[[str], LoadedModel],
    recorder: Recorder,
    *,
    timeout_errors: tuple[type[BaseException], ...] = (),
    soft_time_limit_s: float | None = None,
    enforce_deadline: bool = True,
    progress_interval_s: float = 0.5,
    preview_interval_s: float = 2.0,
) -> JobStatus | None:
    """Run one job through its record: start, progress, then exactly one final state.

    Returns the final status written, or None when the job did not run or another attempt
    wrote it. ``timeout_errors`` are the carrier's own time-limit exceptions (Celery's soft
    limit). ``soft_time_limit_s`` is the limit the error message names; with
    ``enforce_deadline`` this function also stops the job itself at the first step past it
    (the in-process executor has no other way: a thread cannot be interrupted).
    """
    attempt = recorder.start(task.job_id)
    if attempt is None:
        log.info("job %s is not to run (finished, cancelled or gone)", task.job_id)
        return None
    deadline = None
    if soft_time_limit_s is not None and enforce_deadline:
        deadline = time.monotonic() + soft_time_limit_s
    result: OptimizationResult | None = None
    error: JobError | None = None
    try:
        result = run_job(
            task,
            load(task.model),
            on_progress=lambda p, png: recorder.progress(task.job_id, attempt, p, png),
            should_cancel=lambda: recorder.should_stop(task.job_id, attempt),
            deadline=deadline,
            progress_interval_s=progress_interval_s,
            preview_interval_s=preview_interval_s,
        )
        status = JobStatus.SUCCEEDED
    except JobCancelled:
        status = JobStatus.CANCELLED
    except (JobTimedOut, *timeout_errors):  # type: ignore[misc]  # a tuple of types, built
        status = JobStatus.FAILED
        limit = f" of {soft_time_limit_s:g} s" if soft_time_limit_s else ""
        error = JobError(
            code="timeout",
            message=f"the job ran past its time limit{limit}; ask for fewer steps, fewer "
            "units or a smaller image_size",
        )
    except CnnvizError as exc:
        status = JobStatus.FAILED
        error = JobError(code=exc.code, message=str(exc))
    except Exception:
        log.exception("job %s failed", task.job_id)
        status = JobStatus.FAILED
        error = JobError(code="internal_error", message="the job failed; see the worker's log")
    written = recorder.finish(task.job_id, attempt, status, result, error, task.ttl_seconds)
    return status if written else None
