"""The synchronous attribution path: reading the request, running the core, shaping the answer.

The request is JSON (``AttributionsCreate``) or multipart (a file field ``image``, repeated
``target`` fields), read like a feature-map request. Attribution installs captum's hooks on
the model's modules, so it runs on a private copy of each model, one call at a time per model:
the shared model that feature maps use concurrently is never touched.
"""

from __future__ import annotations

import base64
import copy
import threading
import weakref
from dataclasses import dataclass

import torch
from fastapi import Request
from torch import nn

from cnnviz.attribution import Attribution, MapPicture, attribute, map_picture, planned_passes
from cnnviz.imaging import preprocess
from cnnviz.models import LoadedModel, ModelRegistry, ModelSpec
from schemas.attributions import (
    AttributionsCreate,
    AttributionsOptions,
    AttributionsRead,
    CompletenessRead,
    MapStatsRead,
    PredictionRead,
    TargetAttributionRead,
)
from service.errors import ApiError
from service.image_request import ImageRequest, read_image_request

AttributionsRequest = ImageRequest[AttributionsOptions]

_LIST_FIELDS = frozenset({"target"})
_MAX_FORM_FIELDS = 64


async def read_request(request: Request) -> AttributionsRequest:
    """Parse a JSON or multipart request; 415 for any other content type, 422 for bad fields."""
    return await read_image_request(
        request, AttributionsCreate, AttributionsOptions, _LIST_FIELDS, _MAX_FORM_FIELDS
    )


def check_cost(spec: ModelSpec, options: AttributionsOptions, max_passes: int) -> None:
    """422 before any work when the request would run the model more than ``max_passes``
    times: a synchronous answer must stay short (integrated gradients' steps × targets)."""
    targets = len(options.targets or [None])
    passes = planned_passes(
        options.method,
        spec.input_size,
        targets=targets,
        steps=options.steps,
        window=options.window,
        stride=options.stride,
    )
    if passes > max_passes:
        raise ApiError(
            422,
            "too_long_for_sync",
            f"this {options.method!r} request would run the model on {passes} images "
            "(integrated gradients: steps × targets; occlusion: one per patch position), over "
            f"the synchronous limit of {max_passes} (CNNVIZ_ATTRIBUTION_MAX_PASSES); use fewer "
            "steps or targets, or a larger occlusion stride",
        )


class _Replicas:
    """A private copy of each model for attribution, and a lock that lets one call use it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, threading.Lock]]
        self._copies = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module) -> tuple[nn.Module, threading.Lock]:
        with self._lock:
            found = self._copies.get(model)
            if found is None:
                found = (copy.deepcopy(model), threading.Lock())
                self._copies[model] = found
            return found


_replicas = _Replicas()


@dataclass(frozen=True)
class Explained:
    """The attribution of one request and the pictures of each of its targets."""

    result: Attribution
    pictures: list[MapPicture]
    input_size: tuple[int, int]


def _baseline(spec: ModelSpec, name: str) -> torch.Tensor:
    """The baseline image ``(1, C, 1, 1)``, normalised: a black or white image, or the mean."""
    level = {"black": 0.0, "white": 1.0}.get(name)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return torch.zeros_like(mean) if level is None else (level - mean) / std


def explain(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> Explained:
    """Decode, preprocess, attribute, draw: blocking, for the torch pool."""
    loaded: LoadedModel = registry.get(model)
    spec = loaded.spec
    options = request.options
    image = request.decoded(max_pixels, spec.input_size)
    x = preprocess(
        image,
        size=spec.input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
        fit=options.fit,
    )
    replica, lock = _replicas.get(loaded.module)
    with lock:
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
            model_name=model,
        )
    seen = x[0] * torch.tensor(spec.std).view(-1, 1, 1) + torch.tensor(spec.mean).view(-1, 1, 1)
    pictures = [
        map_picture(
            attribution,
            seen,
            signed=result.signed,
            colormap=options.colormap,
            opacity=options.opacity,
        )
        for attribution in result.maps
    ]
    return Explained(result, pictures, spec.input_size)


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
        items.append(
            TargetAttributionRead(
                target=_prediction(target),
                stats=MapStatsRead(
                    min=stats.min, max=stats.max, mean=stats.mean, sum=stats.sum, peak=stats.peak
                ),
                overlay=base64.b64encode(picture.overlay).decode("ascii"),
                map=base64.b64encode(picture.heatmap).decode("ascii"),
                completeness=completeness,
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


def explain_json(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> bytes:
    """:func:`explain`, then the ``AttributionsRead`` answer serialized: blocking, for the pool."""
    explained = explain(registry, model, request, max_pixels)
    return to_read(model, explained).model_dump_json().encode()


def _header_text(text: str) -> str:
    """Header values are Latin-1: labels from a models file may not be."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def explain_png(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> tuple[bytes, dict[str, str]]:
    """The one target's overlay (or map) PNG and headers with its numbers."""
    explained = explain(registry, model, request, max_pixels)
    result = explained.result
    picture = explained.pictures[0]
    target = result.targets[0]
    top = result.predictions[0]
    stats = picture.stats
    headers = {
        "X-Attribution-Method": result.method,
        "X-Target": str(target.index),
        "X-Target-Label": _header_text(target.label),
        "X-Prediction": str(top.index),
        "X-Prediction-Label": _header_text(top.label),
        "X-Map-Range": f"{stats.min},{stats.max}",
        "X-Map-Peak": f"{stats.peak[0]},{stats.peak[1]}",
    }
    if result.layer is not None:
        headers["X-Layer"] = result.layer
    png = picture.overlay if request.options.picture == "overlay" else picture.heatmap
    return png, headers
