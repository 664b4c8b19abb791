"""The synchronous attribution path: reading the request, running the core, shaping the answer.

The request is JSON (``AttributionsCreate``) or multipart (a file field ``image``, repeated
``target`` fields), read like a feature-map request. The work is the attribution kind's own
:func:`workers.kinds.attribution.explain`, so a synchronous answer and a job's result are the
same; a request that would run the model on more images than a synchronous answer may is
refused with a pointer to the job route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnviz.attribution import METRICS, SMOOTH_TYPES, get_method, methods
from cnnviz.models import ModelRegistry, ModelSpec
from schemas.attributions import (
    AttributionMethodList,
    AttributionMethodRead,
    AttributionsCreate,
    AttributionsOptions,
    CostRead,
)
from service.errors import ApiError
from service.image_request import ImageRequest, ImageRequestReader
from workers.kinds.attribution import Explained, explain, layer_channels, passes, to_read
from workers.records.verdicts import SanityStatus, VerdictTable, sanity_status

AttributionsRequest = ImageRequest[AttributionsOptions]

read_request = ImageRequestReader(
    AttributionsCreate, AttributionsOptions, frozenset({"target", "metrics"}), max_fields=64
)


def check_cost(
    model: str,
    spec: ModelSpec,
    options: AttributionsOptions,
    max_pixels: int,
    channels: int = 0,
) -> None:
    """422 before any work when the request would run the model on more than ``max_pixels``
    image-pixels (images × height × width): a synchronous answer must stay short; a job may
    take longer. ``channels`` (the layer's, for Score-CAM) is 0 where not known yet: the
    route checks what it can before the torch pool, and the pool again with the model."""
    count = passes(options, spec, channels)
    height, width = spec.input_size
    if count * height * width > max_pixels:
        formula = get_method(options.method).cost.formula
        raise ApiError(
            422,
            "too_long_for_sync",
            f"this {options.method!r} request would run the model on {count} images of "
            f"{height}×{width} ({count * height * width} image-pixels; the method: {formula}; "
            "with smooth, × noise_samples; metrics: (metric_steps + 1) × (targets + "
            f"random_maps) per metric), over the synchronous limit of {max_pixels} "
            "(CNNVIZ_ATTRIBUTION_MAX_PIXELS); queue it as a job with the same JSON body: "
            f"POST /v1/models/{model}/attribution-jobs (then GET /v1/jobs/{{id}}), or use "
            "fewer steps, targets, metric_steps or random_maps, or a larger stride",
        )


@dataclass(frozen=True)
class SyncAttribution:
    """One synchronous attribution, as the torch pool runs it: ``model`` of ``registry``,
    the request, the most pixels its image may decode to (``max_pixels``) and the cap on a
    synchronous answer's image-pixels, checked again with the model (``limit``; None: not
    checked)."""

    registry: ModelRegistry
    model: str
    request: AttributionsRequest
    max_pixels: int
    limit: int | None = None

    def explained(self, draw: bool = True) -> Explained:
        request, max_pixels = self.request, self.max_pixels
        loaded = self.registry.get(self.model)
        if self.limit is not None:  # again, now that the layer's channels are known (Score-CAM)
            channels = layer_channels(loaded, request.options)
            check_cost(self.model, loaded.spec, request.options, self.limit, channels)
        # The model sees the same pixels whatever is drawn (a JPEG decodes reduced, as on every
        # route); the full-size overlay is drawn on a second decode at the upload's own size.
        image = request.decoded(max_pixels, loaded.spec.input_size)
        full = request.decoded(max_pixels, None) if request.options.overlay_full and draw else None
        return explain(loaded, request.options, image, draw=draw, uploaded=full)


def explain_raw(asked: SyncAttribution) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The maps as float32 arrays, ``maps`` ``(T, H, W)`` at the model's input size (the
    very maps the metrics rank), with ``targets`` ``(T,)`` int64; and headers that name
    the targets: blocking, for the torch pool."""
    result = asked.explained(draw=False).result
    indices = [target.index for target in result.targets]
    arrays = {
        "maps": result.maps.float().numpy(),
        "targets": np.asarray(indices, dtype=np.int64),
    }
    headers = {
        "X-Attribution-Method": result.method,
        "X-Targets": ",".join(map(str, indices)),
        "X-Target-Labels": ",".join(_header_text(t.label) for t in result.targets),
        "X-Signed": str(result.signed).lower(),
    }
    if result.layer is not None:
        headers["X-Layer"] = result.layer
    return arrays, headers


def explain_json(asked: SyncAttribution, sanity: SanityStatus = "unknown") -> bytes:
    """Decode, attribute, draw, then the ``AttributionsRead`` answer with the method's
    ``sanity`` status, serialized: blocking, for the torch pool."""
    read = to_read(asked.model, asked.explained()).model_copy(update={"sanity": sanity})
    return read.model_dump_json().encode()


def _header_text(text: str) -> str:
    """Header values are Latin-1: labels from a models file may not be."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def explain_png(asked: SyncAttribution) -> tuple[bytes, dict[str, str]]:
    """The one target's overlay (or map) PNG and headers with its numbers."""
    explained = asked.explained()
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
    png = picture.overlay if asked.request.options.picture == "overlay" else picture.heatmap
    return png, headers


def method_list(
    model: str | None, spec: ModelSpec | None, verdicts: VerdictTable
) -> AttributionMethodList:
    """The registered methods as the API lists them; with ``spec``, each one's images for
    one target with the request's default options on that model, and each one's sanity
    status from ``verdicts`` (that model's, over every layer checked)."""
    found = []
    for method in methods():
        images = None
        if spec is not None and "channels" not in method.cost.formula:
            layer = "layer" if method.needs_layer else None
            defaults = AttributionsOptions(method=method.name, layer=layer)
            images = passes(defaults, spec)
        found.append(
            AttributionMethodRead(
                name=method.name,
                title=method.title or method.name,
                summary=method.summary,
                needs_layer=method.needs_layer,
                signed=method.signed,
                smoothable=method.smoothable,
                options=list(method.options),
                cost=CostRead(formula=method.cost.formula, default_images=images),
                sanity=sanity_status(verdicts, method.name, None),
            )
        )
    return AttributionMethodList(
        model=model, methods=found, metrics=list(METRICS), smooth_types=list(SMOOTH_TYPES)
    )
