"""Feature-map grids of one image, computed synchronously."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from schemas.feature_maps import FeatureMapsCreate, FeatureMapsRead
from service.deps import PoolDep, RegistryDep, SettingsDep
from service.feature_maps import (
    check_one_png,
    png_headers,
    raw_activations,
    read_request,
    render,
    render_json,
    wants_png,
)
from service.raw import MEDIA_TYPE, RawFormat, encode, wanted_raw
from service.routers.responses import BUSY, RAW_CONTENT, UNKNOWN_MODEL, UPLOAD_PROBLEMS, problem

router = APIRouter(prefix="/models", tags=["feature maps"])

# A 16×16 triangle: a base64 image that the OpenAPI example can send as it is.
_TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQBAMAAADt3eJSAAAAMFBMVEX9zT33yT31xz3swDznvDzQqzuYfzhPRzMyMT"
    "IfIzEXHDAWGzAUGjATGTAQFzAOFTBztqh+AAAAeElEQVR42lXNoQqDUBxG8XM//20i9xEshoXBYHVhD2D0sWy+xUDB"
    "uCisLSwsCoIPIPoE3gWHsJN+7bg7WwKc/+H63KCmT0EQveozCI5jUoEg6eIRhJVejxsiHjxDhzi183z4YGountDnFq"
    "ICcIuFLAXWtzFN+/QfX/6jGrklxmHBAAAAAElFTkSuQmCC"
)
_OPTIONS = {
    name: schema
    for name, schema in FeatureMapsCreate.model_json_schema()["properties"].items()
    if name not in ("image", "sample", "layers", "channels")
}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": FeatureMapsCreate.model_json_schema(),
            "examples": {
                "sample": {
                    "summary": "The built-in triangle, two layers",
                    "value": {"sample": "triangle", "layers": ["block1.conv", "block3.conv"]},
                },
                "top_k": {
                    "summary": "The 8 strongest channels, magma, tiles upscaled 4×",
                    "value": {
                        "sample": "star",
                        "layers": ["block2.conv"],
                        "top_k": 8,
                        "colormap": "magma",
                        "scale": 4,
                    },
                },
                "image": {
                    "summary": "Your own image, base64",
                    "value": {"image": _TINY_PNG, "layers": ["block1.conv"], "channels": [0, 1]},
                },
            },
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["layers"],
                "properties": {
                    "image": {
                        "type": "string",
                        "format": "binary",
                        "description": "The image file; give exactly one of `image` and `sample`.",
                    },
                    "sample": {"type": "string", "examples": ["triangle"]},
                    "layers": {
                        "type": "array",
                        "items": {"type": "string"},
                        "examples": [["block1.conv"]],
                        "description": "One field per layer.",
                    },
                    "channels": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0},
                        "description": "One field per channel. Default: all.",
                    },
                    **_OPTIONS,
                },
                # Exactly one of image and sample, as in JSON (where the schema says it with
                # oneOf); not repeated here: fuzzers cannot judge a file field against it.
            },
            "encoding": {"layers": {"explode": True}, "channels": {"explode": True}},
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON per layer; or with `Accept: image/png` and one layer, the PNG, "
        "its layout in `X-Grid-*` headers and its precision in `X-Precision`; or the raw "
        "activations as float32, with "
        "`?format=npy` (one layer, `(C, H, W)`) or `?format=safetensors` (one tensor per "
        "layer, by name), or the same as `Accept: application/x-npy` / "
        "`application/vnd.safetensors`; `channels` picks channels, other options do not apply.",
        "content": RAW_CONTENT,
    },
    404: UNKNOWN_MODEL,
    406: problem("PNG or .npy asked for with several layers"),
    **UPLOAD_PROBLEMS,
    422: problem("Bad image, layer, channel or option"),
    503: BUSY,
}


@router.post(
    "/{model}/feature-maps",
    response_model=FeatureMapsRead,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_feature_maps(
    model: str,
    request: Request,
    registry: RegistryDep,
    pool: PoolDep,
    settings: SettingsDep,
    format: Annotated[
        RawFormat | None,
        Query(description="the raw activations, float32, instead of grids"),
    ] = None,
) -> Response:
    """Feature-map grids of one image for one or more layers, sharing one forward pass."""
    registry.spec(model)
    raw = wanted_raw(request, others=())
    if raw is not None:
        body = await read_request(request)
        arrays = await pool.run(
            raw_activations, registry, model, body, settings.max_image_pixels, pool
        )
        data = encode(arrays, raw, "this request")
        return Response(data, media_type=MEDIA_TYPE[raw])
    png = wants_png(request.headers.get("accept"))
    body = await read_request(request)
    check_one_png(png, len(set(body.options.layers)), "layer", "grid")
    if png:
        rendered = await pool.run(render, registry, model, body, settings.max_image_pixels, pool)
        return Response(rendered[0].png, media_type="image/png", headers=png_headers(rendered[0]))
    # FeatureMapsRead (the response_model above, the contract in OpenAPI), serialized in the pool.
    content = await pool.run(render_json, registry, model, body, settings.max_image_pixels, pool)
    return Response(content, media_type="application/json")
