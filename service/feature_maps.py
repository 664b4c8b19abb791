"""The synchronous feature-map path: reading the request, running the core, shaping the answer.

The request is JSON (``FeatureMapsCreate``, a base64 image) or multipart (a file field
``image``, repeated ``layers`` and ``channels`` fields, the other options as single fields).
Everything that touches torch, Pillow or base64 runs in :func:`render` (or :func:`render_json`,
which also builds and serializes the JSON answer), which the route hands to the torch pool so
that none of it runs on the event loop.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from cnnviz.data.shapes import sample_image
from cnnviz.errors import InvalidImageError
from cnnviz.featuremaps import LayerMaps, feature_maps
from cnnviz.imaging import decode_image, preprocess
from cnnviz.models import ModelRegistry
from schemas.feature_maps import (
    ChannelStats,
    FeatureMapsCreate,
    FeatureMapsOptions,
    FeatureMapsRead,
    GridLayout,
    LayerMapRead,
)
from service.errors import ApiError

_LIST_FIELDS = frozenset({"layers", "channels"})
# Enough form fields for 16 layers and 4096 channels, and not unbounded.
_MAX_FORM_FIELDS = 16 + 4096 + 16


@dataclass(frozen=True)
class FeatureMapsRequest:
    """What a request asks for, either encoding: options and one image source."""

    options: FeatureMapsOptions
    image_base64: str | None = None
    image_bytes: bytes | None = None
    sample: str | None = None

    def image(self) -> bytes:
        """The uploaded image bytes, base64 decoded where needed (runs in the torch pool)."""
        if self.image_bytes is not None:
            return self.image_bytes
        text = self.image_base64 or ""
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError(
                "the 'image' field is not valid base64; send the image file's bytes in "
                "base64 (or upload them as multipart/form-data)"
            ) from None


@dataclass(frozen=True)
class Rendered:
    """One layer's grid and its PNG."""

    maps: LayerMaps
    png: bytes


def _invalid(exc: ValidationError, where: str) -> RequestValidationError:
    errors = [{**error, "loc": (where, *error["loc"])} for error in exc.errors()]
    return RequestValidationError(errors)


async def read_request(request: Request) -> FeatureMapsRequest:
    """Parse a JSON or multipart request; 415 for any other content type, 422 for bad fields."""
    content_type = request.headers.get("content-type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        try:
            create = FeatureMapsCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc, "body") from None
        return FeatureMapsRequest(create, image_base64=create.image, sample=create.sample)
    if media == "multipart/form-data":
        return await _read_form(request)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"unsupported content type {content_type or '(none)'!r}; send application/json with a "
        "base64 'image' (or a 'sample'), or multipart/form-data with a file field 'image'",
    )


async def _read_form(request: Request) -> FeatureMapsRequest:
    async with request.form(max_files=1, max_fields=_MAX_FORM_FIELDS) as form:
        data: dict[str, Any] = {}
        image: bytes | None = None
        for key in dict.fromkeys(form.keys()):
            values = form.getlist(key)
            if key == "image":
                upload = values[0]
                if not isinstance(upload, UploadFile):
                    raise ApiError(
                        422,
                        "invalid_request",
                        "in multipart/form-data, 'image' must be a file field "
                        "(curl: -F image=@picture.png)",
                    )
                image = await upload.read()
            elif key in _LIST_FIELDS:
                data[key] = values
            else:
                data[key] = values[0] if len(values) == 1 else values
    sample = data.pop("sample", None)
    try:
        options = FeatureMapsOptions.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, "form") from None
    if (image is None) == (sample is None):
        raise ApiError(
            422, "invalid_request", "give exactly one of a file field 'image' or a field 'sample'"
        )
    if sample is not None and not isinstance(sample, str):
        raise ApiError(422, "invalid_request", "'sample' must be a single text field")
    return FeatureMapsRequest(options, image_bytes=image, sample=sample)


def render(
    registry: ModelRegistry, model: str, request: FeatureMapsRequest, max_pixels: int
) -> list[Rendered]:
    """Decode, preprocess, one forward pass, grids and PNGs: blocking, for the torch pool."""
    loaded = registry.get(model)
    options = request.options
    loaded.index.resolve(options.layers)  # a bad layer name costs no decoding
    spec = loaded.spec
    if request.sample is not None:
        image = sample_image(request.sample)
    else:
        image = decode_image(request.image(), max_pixels=max_pixels, draft_size=spec.input_size)
    x = preprocess(
        image,
        size=spec.input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
        fit=options.fit,
    )
    maps = feature_maps(
        loaded.module,
        x,
        options.layers,
        channels=options.channels,
        top_k=options.top_k,
        normalize=options.normalize,
        colormap=options.colormap,
        columns=options.columns,
        padding=options.padding,
        scale=options.scale,
    )
    return [Rendered(m, m.png()) for m in maps]


def _layout(maps: LayerMaps) -> GridLayout:
    layout = maps.layout
    return GridLayout(
        rows=layout.rows,
        columns=layout.columns,
        tile=layout.tile,
        padding=layout.padding,
        channels=list(layout.channels),
    )


def to_read(model: str, rendered: list[Rendered]) -> FeatureMapsRead:
    """The JSON answer: per layer its shape, grid layout, per-channel stats and base64 PNG."""
    layers = []
    for item in rendered:
        maps = item.maps
        stats = [
            ChannelStats(channel=channel, min=lo, max=hi, mean=mean)
            for channel, (lo, hi, mean) in zip(maps.channels, maps.stats.tolist(), strict=True)
        ]
        layers.append(
            LayerMapRead(
                name=maps.name,
                shape=list(maps.shape),
                grid=_layout(maps),
                stats=stats,
                image=base64.b64encode(item.png).decode("ascii"),
            )
        )
    return FeatureMapsRead(model=model, layers=layers)


def render_json(
    registry: ModelRegistry, model: str, request: FeatureMapsRequest, max_pixels: int
) -> bytes:
    """:func:`render`, then the ``FeatureMapsRead`` answer serialized: blocking, for the pool.

    The route returns these bytes as they are. Building and dumping the schema here keeps the
    per-channel stats, the base64 and the JSON off the event loop, and FastAPI does not
    validate and serialize the answer a second time.
    """
    return to_read(model, render(registry, model, request, max_pixels)).model_dump_json().encode()


def png_headers(maps: LayerMaps) -> dict[str, str]:
    """The layout of a grid returned as a bare PNG, in response headers."""
    layout = maps.layout
    return {
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
