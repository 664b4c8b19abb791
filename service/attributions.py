"""The synchronous attribution path: reading the request, running the core, shaping the answer.

The request is JSON (``AttributionsCreate``) or multipart (a file field ``image``, repeated
``target`` fields), read like a feature-map request. The work is the attribution kind's own
:func:`workers.kinds.attribution.explain`, so a synchronous answer and a job's result are the
same; a request that would run the model on more images than a synchronous answer may is
refused with a pointer to the job route.
"""

from __future__ import annotations

import numpy as np
from fastapi import Request

from cnnviz.models import ModelRegistry, ModelSpec
from schemas.attributions import AttributionsCreate, AttributionsOptions
from service.errors import ApiError
from service.image_request import ImageRequest, read_image_request
from workers.kinds.attribution import Explained, explain, passes, to_read

AttributionsRequest = ImageRequest[AttributionsOptions]

_LIST_FIELDS = frozenset({"target", "metrics"})
_MAX_FORM_FIELDS = 64


async def read_request(request: Request) -> AttributionsRequest:
    """Parse a JSON or multipart request; 415 for any other content type, 422 for bad fields."""
    return await read_image_request(
        request, AttributionsCreate, AttributionsOptions, _LIST_FIELDS, _MAX_FORM_FIELDS
    )


def check_cost(model: str, spec: ModelSpec, options: AttributionsOptions, max_pixels: int) -> None:
    """422 before any work when the request would run the model on more than ``max_pixels``
    image-pixels (images × height × width): a synchronous answer must stay short; a job may
    take longer."""
    count = passes(options, spec)
    height, width = spec.input_size
    if count * height * width > max_pixels:
        raise ApiError(
            422,
            "too_long_for_sync",
            f"this {options.method!r} request would run the model on {count} images of "
            f"{height}×{width} ({count * height * width} image-pixels; integrated gradients: "
            "steps × targets; occlusion: one per patch position; metrics: (metric_steps + 1) × "
            f"(targets + random_maps) per metric), over the synchronous limit of {max_pixels} "
            "(CNNVIZ_ATTRIBUTION_MAX_PIXELS); queue it as a job with the same JSON body: "
            f"POST /v1/models/{model}/attribution-jobs (then GET /v1/jobs/{{id}}), or use "
            "fewer steps, targets, metric_steps or random_maps, or a larger stride",
        )


def _explained(
    registry: ModelRegistry,
    model: str,
    request: AttributionsRequest,
    max_pixels: int,
    draw: bool = True,
) -> Explained:
    loaded = registry.get(model)
    # The full-size overlay is drawn at the upload's own size: no reduced JPEG decoding then.
    draft = None if request.options.overlay_full else loaded.spec.input_size
    image = request.decoded(max_pixels, draft)
    return explain(loaded, request.options, image, draw=draw)


def explain_raw(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The maps as float32 arrays, ``maps`` ``(T, H, W)`` at the model's input size (the
    very maps the metrics rank), with ``targets`` ``(T,)`` int64; and headers that name
    the targets: blocking, for the torch pool."""
    result = _explained(registry, model, request, max_pixels, draw=False).result
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


def explain_json(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> bytes:
    """Decode, attribute, draw, then the ``AttributionsRead`` answer serialized: blocking,
    for the torch pool."""
    explained = _explained(registry, model, request, max_pixels)
    return to_read(model, explained).model_dump_json().encode()


def _header_text(text: str) -> str:
    """Header values are Latin-1: labels from a models file may not be."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def explain_png(
    registry: ModelRegistry, model: str, request: AttributionsRequest, max_pixels: int
) -> tuple[bytes, dict[str, str]]:
    """The one target's overlay (or map) PNG and headers with its numbers."""
    explained = _explained(registry, model, request, max_pixels)
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
