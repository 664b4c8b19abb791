"""The synchronous feature-map path: reading the request, running the core, shaping the answer.

The request is JSON (``FeatureMapsCreate``, a base64 image) or multipart (a file field
``image``, repeated ``layers`` and ``channels`` fields, the other options as single fields),
read by :mod:`service.image_request`.
Everything that touches torch, Pillow or base64 runs in :func:`render` (or :func:`render_json`,
which also builds and serializes the JSON answer), which the route hands to the torch pool so
that none of it runs on the event loop.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.featuremaps import (
    GridOptions,
    LayerMaps,
    layer_activations,
    maps_from_activations,
)
from cnnviz.models import ModelRegistry
from cnnviz.precision import resolve_precision
from schemas.feature_maps import (
    FeatureMapsCreate,
    FeatureMapsOptions,
    FeatureMapsRead,
)
from service.concurrency import TorchPool
from service.errors import ApiError
from service.image_request import ImageRequest, ImageRequestReader

FeatureMapsRequest = ImageRequest[FeatureMapsOptions]

read_request = ImageRequestReader(
    FeatureMapsCreate,
    FeatureMapsOptions,
    frozenset({"layers", "channels"}),
    # Enough form fields for 16 layers and 4096 channels, and not unbounded.
    max_fields=16 + 4096 + 16,
)


@dataclass(frozen=True)
class Rendered:
    """One layer's grid and its PNG, and the precision its forward pass ran in."""

    maps: LayerMaps
    png: bytes
    precision: str = "fp32"


def _activations(
    registry: ModelRegistry,
    model: str,
    request: FeatureMapsRequest,
    max_pixels: int,
    pool: TorchPool,
) -> tuple[dict[str, Any], list[str], GridOptions]:
    """Decode, preprocess, one forward pass: ``{layer: (1, *shape)}``, the layer names, and
    the grid options (checked before any decoding).

    The forward pass goes through the pool's micro-batcher: requests for the same model,
    layers and precision that are due together share one, with the same numbers as alone.
    """
    loaded = registry.get(model)
    options = request.options
    # A bad layer name, or one whose axes are ambiguous, costs no decoding.
    names = [info.name for info in loaded.index.usable(options.layers)]
    grid = GridOptions(  # nor a bad option: checked once, here
        channels=None if options.channels is None else tuple(options.channels),
        top_k=options.top_k,
        normalize=options.normalize,
        colormap=options.colormap,
        columns=options.columns,
        padding=options.padding,
        scale=options.scale,
    )
    spec = loaded.spec
    with pool.batcher.arriving():
        image = request.decoded(max_pixels, spec.input_size)
        x = spec.preprocess(image, options.fit)
    key = (model, frozenset(names), options.precision, tuple(x.shape))
    outputs = pool.batcher.forward(
        key,
        x,
        lambda batch: layer_activations(loaded.module, batch, names, precision=options.precision),
    )
    return outputs, names, grid


def raw_activations(
    registry: ModelRegistry,
    model: str,
    request: FeatureMapsRequest,
    max_pixels: int,
    pool: TorchPool,
) -> dict[str, np.ndarray]:
    """The layers' activations of the image as float32 arrays ``(C, H, W)`` (or the layer's
    own shape), keyed by layer name: blocking, for the torch pool. ``channels``, when given,
    picks channels (in that order); the grid options do not apply."""
    outputs, names, _ = _activations(registry, model, request, max_pixels, pool)
    channels = request.options.channels
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        out = outputs[name]
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise LayerShapeError(
                f"layer {name!r} of model {model!r} gives {type(out).__name__}, not a float "
                "tensor; ask for a layer that outputs one",
                listing=("layers", model),
            )
        tensor = out[0]
        if channels is not None and tensor.dim() >= 1:
            count = tensor.shape[0]
            bad = [c for c in channels if c >= count]
            if bad:
                raise InvalidArgumentError(
                    f"channels {bad} are out of range: layer {name!r} has {count} channels"
                )
            tensor = tensor[list(channels)]
        arrays[name] = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return arrays


def render(
    registry: ModelRegistry,
    model: str,
    request: FeatureMapsRequest,
    max_pixels: int,
    pool: TorchPool,
) -> list[Rendered]:
    """Decode, preprocess, one forward pass, grids and PNGs: blocking, for the torch pool."""
    outputs, names, grid = _activations(registry, model, request, max_pixels, pool)
    options = request.options
    maps = maps_from_activations(outputs, names, grid, model_name=registry.spec(model).name)
    used = resolve_precision(options.precision, registry.get(model).device).precision
    return [Rendered(m, m.png(), used) for m in maps]


def to_read(model: str, rendered: list[Rendered]) -> FeatureMapsRead:
    """The JSON answer: per layer its shape, grid layout, per-channel stats and base64 PNG.

    Validated as one nested structure (one call into pydantic's core), not a model built per
    channel's stats: a layer has up to thousands of channels.
    """
    layers = []
    for item in rendered:
        maps = item.maps
        layout = maps.layout
        stats = maps.stats.tolist()
        layers.append(
            {
                "name": maps.name,
                "shape": list(maps.shape),
                "grid": {
                    "rows": layout.rows,
                    "columns": layout.columns,
                    "tile": layout.tile,
                    "padding": layout.padding,
                    "channels": list(layout.channels),
                },
                "stats": [
                    {"channel": channel, "min": lo, "max": hi, "mean": mean}
                    for channel, (lo, hi, mean) in zip(maps.channels, stats, strict=True)
                ],
                "image": base64.b64encode(item.png).decode("ascii"),
            }
        )
    precision = rendered[0].precision if rendered else "fp32"
    return FeatureMapsRead.model_validate(
        {"model": model, "layers": layers, "precision": precision}
    )


def render_json(
    registry: ModelRegistry,
    model: str,
    request: FeatureMapsRequest,
    max_pixels: int,
    pool: TorchPool,
) -> bytes:
    """:func:`render`, then the ``FeatureMapsRead`` answer serialized: blocking, for the pool.

    The route returns these bytes as they are. Building and dumping the schema here keeps the
    per-channel stats, the base64 and the JSON off the event loop, and FastAPI does not
    validate and serialize the answer a second time.
    """
    rendered = render(registry, model, request, max_pixels, pool)
    return to_read(model, rendered).model_dump_json().encode()


def png_headers(rendered: Rendered) -> dict[str, str]:
    """The layout of a grid returned as a bare PNG, and its precision, in response headers."""
    maps = rendered.maps
    layout = maps.layout
    return {
        "X-Precision": rendered.precision,
        "X-Layer": maps.name,
        "X-Layer-Shape": ",".join(map(str, maps.shape)),
        "X-Grid-Rows": str(layout.rows),
        "X-Grid-Columns": str(layout.columns),
        "X-Grid-Tile": f"{layout.tile[0]},{layout.tile[1]}",
        "X-Grid-Padding": str(layout.padding),
        "X-Grid-Channels": ",".join(map(str, layout.channels)),
    }


def _quality(accept: dict[str, float], media: str) -> float:
    main = media.split("/")[0]
    for candidate in (media, f"{main}/*", "*/*"):
        if candidate in accept:
            return accept[candidate]
    return 0.0


def wants_png(accept_header: str | None) -> bool:
    """Whether ``Accept`` prefers ``image/png`` to JSON (ties go to JSON); 406 if neither."""
    if not accept_header:
        return False
    accept: dict[str, float] = {}
    for part in accept_header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            accept[media.lower()] = max(accept.get(media.lower(), 0.0), quality)
    png = _quality(accept, "image/png")
    json = max(_quality(accept, "application/json"), _quality(accept, "application/problem+json"))
    if png <= 0 and json <= 0:
        raise ApiError(
            406,
            "not_acceptable",
            f"cannot answer with any of Accept: {accept_header!r}; "
            "ask for application/json or image/png",
        )
    return png > json


def check_one_png(png: bool, count: int, noun: str, picture: str) -> None:
    """406 where the answer is to be one PNG (``png``, see :func:`wants_png`), the ``picture``
    of one ``noun``, and the request asks for ``count`` of them."""
    if png and count > 1:
        raise ApiError(
            406,
            "not_acceptable",
            f"Accept: image/png returns one {noun}'s {picture}, and {count} {noun}s were asked "
            f"for; ask for one {noun}, or for application/json",
        )
