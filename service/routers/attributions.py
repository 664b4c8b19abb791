"""Attribution maps: which pixels made the prediction, computed synchronously."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from schemas.attributions import (
    AttributionsCreate,
    AttributionsOptions,
    AttributionsRead,
)
from service.attributions import (
    SyncAttribution,
    check_cost,
    explain_json,
    explain_png,
    explain_raw,
    read_request,
)
from service.deps import JobsDep, PoolDep, RegistryDep, SettingsDep
from service.feature_maps import check_one_png, wants_png
from service.jobs.manager import JobManager
from service.raw import MEDIA_TYPE, RawFormat, encode, wanted_raw
from service.routers.responses import BUSY, RAW_CONTENT, UNKNOWN_MODEL, UPLOAD_PROBLEMS, problem
from workers.kinds.sanity import answer_status
from workers.records.verdicts import SanityStatus

router = APIRouter(prefix="/models", tags=["attributions"])


# Each is run by tests/api/test_attributions.py: the documentation cannot drift from the API.
EXAMPLES: dict[str, dict[str, Any]] = {
    "gradcam": {
        "summary": "Grad-CAM of the top prediction at the last block",
        "value": {"sample": "triangle", "method": "gradcam", "layer": "block4.relu"},
    },
    "targets": {
        "summary": "Grad-CAM for two classes at once",
        "value": {
            "sample": "star",
            "method": "gradcam",
            "layer": "block4.relu",
            "target": ["star", "triangle"],
        },
    },
    "saliency": {
        "summary": "Saliency, magma",
        "value": {"sample": "cross", "method": "saliency", "colormap": "magma"},
    },
    "integrated_gradients": {
        "summary": "Integrated gradients from black, 64 steps (completeness reported)",
        "value": {"sample": "circle", "method": "integrated_gradients", "steps": 64},
    },
    "guided_gradcam": {
        "summary": "Guided Grad-CAM for the class 'hexagon' (index 5)",
        "value": {
            "sample": "hexagon",
            "method": "guided_gradcam",
            "layer": "block4.relu",
            "target": 5,
        },
    },
    "occlusion": {
        "summary": "Occlusion with 8-pixel patches every 4 pixels",
        "value": {"sample": "square", "method": "occlusion", "window": 8, "stride": 4},
    },
    "faithfulness": {
        "summary": "Grad-CAM with RISE deletion and insertion scores and their random reference",
        "value": {
            "sample": "triangle",
            "method": "gradcam",
            "layer": "block4.relu",
            "metrics": ["deletion", "insertion"],
        },
    },
}
_OPTIONS = {
    name: schema
    for name, schema in AttributionsCreate.model_json_schema()["properties"].items()
    if name not in ("image", "sample", "target")
}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": AttributionsCreate.model_json_schema(),
            "examples": EXAMPLES,
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["method"],
                "properties": {
                    "image": {
                        "type": "string",
                        "format": "binary",
                        "description": "The image file (or give `sample`).",
                    },
                    "sample": {"type": "string", "examples": ["triangle"]},
                    "target": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "One field per target: a class index or label.",
                    },
                    **_OPTIONS,
                },
            },
            "encoding": {"target": {"explode": True}},
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON: the top-5 predictions and, per target, the map over the input, "
        "the map alone and its stats; or with `Accept: image/png` and one target, the overlay "
        "(or `picture: map`), its numbers in `X-*` headers; or the raw maps, float32, at the "
        "model's input size (the maps the metrics rank): `?format=npy` (`(targets, H, W)`) or "
        "`?format=safetensors` (`maps` and `targets`), or the same as "
        "`Accept: application/x-npy` / `application/vnd.safetensors`; the targets in "
        "`X-Targets`. A raw answer computes no pictures and no metrics.",
        "content": RAW_CONTENT,
    },
    404: UNKNOWN_MODEL,
    406: problem("`Accept: image/png` with several targets"),
    **UPLOAD_PROBLEMS,
    422: problem(
        "Bad image, method, layer, target, output or option; or more model passes than a "
        "synchronous request may take (`too_long_for_sync`)"
    ),
    503: BUSY,
}


async def _sanity(jobs: JobManager, model: str, options: AttributionsOptions) -> SanityStatus:
    """The method's sanity status on the model's weights, at the layer asked for."""
    return answer_status(await jobs.verdicts(model), options.method, options.layer)


@router.post(
    "/{model}/attributions",
    response_model=AttributionsRead,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_attributions(
    model: str,
    request: Request,
    registry: RegistryDep,
    pool: PoolDep,
    settings: SettingsDep,
    jobs: JobsDep,
    format: Annotated[
        RawFormat | None,
        Query(description="the raw maps, float32, instead of pictures"),
    ] = None,
) -> Response:
    """Which pixels made the prediction: attribution maps of one image for its targets."""
    spec = registry.spec(model)
    raw = wanted_raw(request, others=())
    limit = settings.attribution_max_pixels
    if raw is not None:
        # The maps alone: the metrics' images are not run, so they are not charged.
        read = await read_request(request)
        body = dataclasses.replace(read, options=read.options.model_copy(update={"metrics": []}))
        check_cost(model, spec, body.options, limit)
        sanity = await _sanity(jobs, model, body.options)
        asked = SyncAttribution(registry, model, body, settings.max_image_pixels, limit)
        arrays, headers = await pool.run(explain_raw, asked)
        headers["X-Sanity"] = sanity
        if raw == "npy":
            arrays = {"maps": arrays["maps"]}
        return Response(
            encode(arrays, raw, "this request"), media_type=MEDIA_TYPE[raw], headers=headers
        )
    png = wants_png(request.headers.get("accept"))
    body = await read_request(request)
    options: AttributionsOptions = body.options
    check_one_png(png, len(options.targets or [None]), "target", "picture")
    check_cost(model, spec, options, limit)
    sanity = await _sanity(jobs, model, options)
    asked = SyncAttribution(registry, model, body, settings.max_image_pixels, limit)
    if png:
        content, headers = await pool.run(explain_png, asked)
        headers["X-Sanity"] = sanity
        return Response(content, media_type="image/png", headers=headers)
    content = await pool.run(explain_json, asked, sanity)
    return Response(content, media_type="application/json")
