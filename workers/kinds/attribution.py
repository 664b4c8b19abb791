"""The attribution kind: attribution maps too long for a synchronous answer (integrated
gradients with many steps or targets, fine occlusion), and the one function, :func:`explain`,
that the synchronous path runs too."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import torch
from PIL import Image

from cnnviz.attribution import (
    Attribution,
    Faithfulness,
    MapPicture,
    Smooth,
    attribute,
    exclusive_copy,
    faithfulness,
    get_method,
    map_picture,
    metric_images,
    overlay_full,
    planned_passes,
)
from cnnviz.data.shapes import sample_image
from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.imaging.decode import decode_base64, decode_image
from cnnviz.imaging.preprocess import fit_box, to_tensor
from cnnviz.models import LoadedModel, ModelSpec
from schemas.attributions import (
    JOB_ROUTE,
    AttributionsCreate,
    AttributionsOptions,
    AttributionsRead,
    CompletenessRead,
    FaithfulnessRead,
    MapStatsRead,
    PredictionRead,
    RandomReferenceRead,
    SmoothOptions,
    TargetAttributionRead,
)
from schemas.jobs import Progress
from workers.kinds.base import JobContext, OneShardJobKind, Resources, ResultPictures
from workers.kinds.registry import register_kind
from workers.kinds.sanity import answer_status
from workers.records.verdicts import Verdicts

__all__ = [
    "MAX_JOB_PASSES",
    "Attributions",
    "Explained",
    "explain",
    "layer_channels",
    "passes",
    "to_read",
]

# A job may run the model on this many images (1024 steps × 16 targets of integrated
# gradients; occlusion with stride 1 on inputs up to 256×256); the time limit bounds the rest.
MAX_JOB_PASSES = 1 << 16
# Images in a job's request were checked by the API's body limit; this caps their pixels.
_JOB_MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class Explained:
    """The attribution of one request, the pictures of each of its targets and, when asked
    for, their faithfulness scores."""

    result: Attribution
    pictures: list[MapPicture]
    input_size: tuple[int, int]
    scores: list[Faithfulness] | None = None
    full: list[bytes] | None = None


def _baseline(spec: ModelSpec, name: str) -> torch.Tensor:
    """The baseline image ``(1, C, 1, 1)``, normalised: a black or white image, or the mean."""
    level = {"black": 0.0, "white": 1.0}.get(name)
    if level is None:
        return torch.zeros((1, spec.channels, 1, 1))
    return spec.normalize(torch.full((1, spec.channels, 1, 1), level))


class _Colours(TypedDict):
    """How a map is coloured, the same in its pictures and its full-size overlay."""

    signed: bool
    colormap: str | None
    opacity: float


def _smooth(options: SmoothOptions | None) -> Smooth | None:
    if options is None:
        return None
    return Smooth(options.type, options.noise_samples, options.noise_level, options.seed)


def explain(
    loaded: LoadedModel,
    options: AttributionsOptions,
    image: Image.Image,
    on_batch: Callable[[int], None] | None = None,
    draw: bool = True,
    uploaded: Image.Image | None = None,
) -> Explained:
    """Preprocess ``image``, attribute it, draw each target's map (blocking); without
    ``draw``, only the maps (and no metrics: a raw answer holds the maps alone). ``uploaded``:
    the upload decoded at its own size, for ``overlay_full`` where ``image`` was decoded
    reduced (a JPEG's draft); the model's answer never depends on the drawing options.

    Runs on a private copy of the model (:func:`cnnviz.attribution.exclusive_copy`): the
    shared model keeps serving other requests untouched.
    """
    spec = loaded.spec
    x = spec.preprocess(image, options.fit)
    with exclusive_copy(loaded.module) as replica:
        result = attribute(
            replica,
            x,
            options.method,
            targets=options.targets,
            layer=options.layer,
            output=options.output,
            labels=spec.labels,
            baseline=_baseline(spec, options.baseline),
            steps=options.steps,
            window=options.window,
            stride=options.stride,
            model_name=spec.name,
            axes=spec.axes,  # the replica's layers read as the registry declares
            on_batch=on_batch,
            smooth=_smooth(options.smooth),
        )
        scores = None
        if options.metrics and draw:
            param = next(replica.parameters(), None)
            scores = faithfulness(
                replica,
                x if param is None else x.to(param.device),
                result.maps,
                [target.index for target in result.targets],
                output=options.output,
                metrics=options.metrics,
                steps=options.metric_steps,
                random_maps=options.random_maps,
                seed=options.metric_seed,
                on_batch=on_batch,
            )
    if not draw:
        return Explained(result, [], spec.input_size)
    seen = spec.denormalize(x[0])
    colours = _Colours(signed=result.signed, colormap=options.colormap, opacity=options.opacity)
    pictures = [map_picture(attribution, seen, **colours) for attribution in result.maps]
    full = None
    if options.overlay_full:
        source = uploaded if uploaded is not None else image
        box = fit_box(source.size, spec.input_size, options.fit)
        pixels = to_tensor(source, 3)
        full = [overlay_full(attribution, pixels, box, **colours) for attribution in result.maps]
    return Explained(result, pictures, spec.input_size, scores, full)


def _prediction(p: object) -> PredictionRead:
    return PredictionRead.model_validate(p, from_attributes=True)


def to_read(model: str, explained: Explained) -> AttributionsRead:
    """The JSON answer: the top predictions, and per target its pictures and numbers."""
    result = explained.result
    items = []
    for i, (target, picture) in enumerate(zip(result.targets, explained.pictures, strict=True)):
        completeness = None
        if result.completeness is not None:
            total, expected = result.completeness[i].tolist()
            error = abs(total - expected) / abs(expected) if expected else float(total != 0)
            completeness = CompletenessRead(sum=total, expected=expected, relative_error=error)
        stats = picture.stats
        scores = None if explained.scores is None else _faithfulness(explained.scores[i])
        items.append(
            TargetAttributionRead(
                target=_prediction(target),
                stats=MapStatsRead(
                    min=stats.min, max=stats.max, mean=stats.mean, sum=stats.sum, peak=stats.peak
                ),
                overlay=base64.b64encode(picture.overlay).decode("ascii"),
                map=base64.b64encode(picture.heatmap).decode("ascii"),
                overlay_full=None
                if explained.full is None
                else base64.b64encode(explained.full[i]).decode("ascii"),
                completeness=completeness,
                faithfulness=scores,
            )
        )
    return AttributionsRead(
        model=model,
        method=result.method,
        layer=result.layer,
        signed=result.signed,
        input_size=explained.input_size,
        predictions=[_prediction(p) for p in result.predictions],
        attributions=items,
    )


def _faithfulness(scores: Faithfulness) -> FaithfulnessRead:
    random = None
    if scores.random_deletion_auc is not None or scores.random_insertion_auc is not None:
        random = RandomReferenceRead(
            deletion_auc=scores.random_deletion_auc, insertion_auc=scores.random_insertion_auc
        )
    return FaithfulnessRead(
        deletion_auc=scores.deletion_auc,
        insertion_auc=scores.insertion_auc,
        random=random,
        deletion_curve=None if scores.deletion_curve is None else list(scores.deletion_curve),
        insertion_curve=None if scores.insertion_curve is None else list(scores.insertion_curve),
    )


def layer_channels(loaded: LoadedModel, request: AttributionsOptions) -> int:
    """The channels of the request's layer (what Score-CAM's cost counts); 0 without one."""
    if request.layer is None or not get_method(request.method).needs_layer:
        return 0
    info = loaded.index.info(request.layer)  # UnknownLayerError: a 422
    # Units, whatever the axes (a ViT's features, not its tokens); unknown axes: its first
    # axis, and the method refuses the layer before it runs.
    return int(info.units if info.units is not None else info.shape[0])


def passes(request: AttributionsOptions, spec: ModelSpec, channels: int = 0) -> int:
    """The images a request runs through the model: the method's (see
    :func:`planned_passes`; ``channels``: the layer's) and the faithfulness metrics' (see
    :func:`metric_images`)."""
    targets = max(1, len(set(request.targets or ())))
    method = planned_passes(
        request.method,
        spec.input_size,
        targets=targets,
        steps=request.steps,
        window=request.window,
        stride=request.stride,
        channels=channels,
        samples=request.smooth.noise_samples if request.smooth else 1,
    )
    metrics = metric_images(request.metrics, request.metric_steps, request.random_maps, targets)
    return method + metrics


def _image(request: AttributionsCreate, draft: tuple[int, int] | None = None) -> Image.Image:
    """The request's image; with ``draft`` (the model's input size) a JPEG decodes reduced,
    as the synchronous route decodes it, so that both give the model the same pixels."""
    if request.sample is not None:
        return sample_image(request.sample)
    data = decode_base64(request.image or "")
    return decode_image(data, max_pixels=_JOB_MAX_IMAGE_PIXELS, draft_size=draft)


@register_kind
class Attributions(OneShardJobKind[AttributionsCreate, AttributionsRead]):
    """Attribution as a job: one shard; progress in images run through the model."""

    route = JOB_ROUTE
    progress_unit = "images"

    def prepare(
        self, request: AttributionsCreate, model: str, resources: Resources
    ) -> AttributionsCreate:
        loaded = resources.model(model)
        method = get_method(request.method)
        count = passes(request, loaded.spec, layer_channels(loaded, request))
        if count > MAX_JOB_PASSES:
            raise InvalidArgumentError(
                f"this {request.method!r} job would run the model on {count} images, over the "
                f"limit of {MAX_JOB_PASSES}; use fewer steps or targets, or a larger stride"
            )
        if method.needs_layer and request.layer is None:
            raise InvalidArgumentError(
                f"method {method.name!r} needs a layer (see GET /v1/models/{model}/layers)"
            )
        layer = request.layer if method.needs_layer else None
        # module_of raises UnknownLayerError for a name the model lacks.
        if layer is not None and loaded.index.module_of(layer) is None:
            raise LayerShapeError(
                f"layer {layer!r} of model {model!r} is a functional op, not a module's "
                "output; Grad-CAM hooks a module"
            )
        # Not batch-first, ambiguous axes, or no grid to map: refused now, not failed later.
        if layer is not None and loaded.index.usable([layer])[0].axes == "vector":
            raise LayerShapeError(
                f"layer {layer!r} of model {model!r} is a vector with no grid; Grad-CAM needs "
                "a layer with a grid: (C, H, W), (H, W, C) or tokens"
            )
        _image(request)  # a bad image is refused before the job is queued
        return request

    def work(self, request: AttributionsCreate, model: str, resources: Resources) -> int:
        loaded = resources.model(model)
        return passes(request, loaded.spec, layer_channels(loaded, request))

    def run(
        self, request: AttributionsCreate, model: str, resources: Resources, context: JobContext
    ) -> AttributionsRead:
        loaded = resources.model(model)
        total = passes(request, loaded.spec, layer_channels(loaded, request))
        done = 0

        def on_batch(images: int) -> None:
            nonlocal done
            context.check()  # cancel or deadline: stops the attribution between batches
            done = min(done + images, total)
            if context.progress_due():
                context.report(Progress(step=done, total=total, unit=self.progress_unit))

        image = _image(request, loaded.spec.input_size)
        full = _image(request) if request.overlay_full else None
        explained = explain(loaded, request, image, on_batch, uploaded=full)
        context.report(Progress(step=total, total=total, unit=self.progress_unit))
        return to_read(model, explained)

    def finalize(
        self,
        result: AttributionsRead,
        request: AttributionsCreate,
        model: str,
        weights: str | None,
        kept: Verdicts,
    ) -> AttributionsRead:
        """The method's sanity status for the weights the job ran."""
        table = {} if weights is None else kept.verdicts(model, weights)
        status = answer_status(table, result.method, result.layer)
        return result.model_copy(update={"sanity": status})

    def pictures(self, result: AttributionsRead) -> ResultPictures | None:
        # One overlay per target (small: the model's input size); the API tiles them.
        return ResultPictures([target.overlay for target in result.attributions])
