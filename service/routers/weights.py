"""Filter weights of a convolution, drawn as a grid."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from schemas.weights import WeightsQuery, WeightsRead
from service.deps import PoolDep, RegistryDep
from service.feature_maps import wants_png
from service.routers.responses import BUSY, PNG_CONTENT, UNKNOWN_MODEL, problem
from service.weights import png_headers, render_json, render_png

router = APIRouter(prefix="/models", tags=["weights"])

# Tested by tests/api/test_weights.py: every example answers 200.
_LAYERS: dict[str, Any] = {
    "first": {"summary": "RGB tiles of the first conv (shapes)", "value": "block1.conv"},
    "deeper": {"summary": "A deeper conv: slices or norm (shapes)", "value": "block3.conv"},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON with the grid, its layout, per-tile stats and the numbers; or with "
        "`Accept: image/png`, the PNG, its layout in `X-Grid-*` headers.",
        "content": PNG_CONTENT,
    },
    404: UNKNOWN_MODEL,
    406: problem("Neither JSON nor PNG acceptable"),
    422: problem(
        "Unknown layer, a layer without a convolution kernel (the message names those with "
        "one), or a bad option"
    ),
    503: BUSY,
}


@router.get(
    "/{model}/layers/{layer}/weights",
    response_model=WeightsRead,
    responses=_RESPONSES,
)
async def read_weights(
    model: str,
    layer: Annotated[
        str, Path(description="A convolution module's qualified name", openapi_examples=_LAYERS)
    ],
    query: Annotated[WeightsQuery, Query()],
    request: Request,
    registry: RegistryDep,
    pool: PoolDep,
) -> Response:
    """The kernels of a convolution (a module's qualified name) as a grid PNG or JSON."""
    registry.spec(model)
    if wants_png(request.headers.get("accept")):
        weights, png = await pool.run(render_png, registry, model, layer, query)
        return Response(png, media_type="image/png", headers=png_headers(weights))
    content = await pool.run(render_json, registry, model, layer, query)
    return Response(content, media_type="application/json")
