"""Built-in sample images, so that a client needs no image of its own."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from cnnviz.data.shapes import CLASSES, sample_image
from cnnviz.errors import shown
from cnnviz.imaging import encode_png
from schemas.samples import SampleList, SampleRead
from service.errors import ApiError
from service.routers.responses import PNG_CONTENT, problem

router = APIRouter(prefix="/samples", tags=["samples"])


@functools.lru_cache(maxsize=len(CLASSES))
def _sample_png(name: str) -> bytes:
    return encode_png(sample_image(name), compress_level=9)


@router.get("")
async def list_samples() -> SampleList:
    """The names of the sample images, usable as `sample` in a feature-maps request."""
    return SampleList(
        samples=[SampleRead(name=name, url=f"/v1/samples/{name}") for name in CLASSES]
    )


@router.get(
    "/{name}",
    response_class=Response,
    responses={
        200: {"content": PNG_CONTENT},
        404: problem("Unknown sample"),
    },
)
async def get_sample(name: str) -> Response:
    """One sample image, a 64×64 PNG."""
    if name not in CLASSES:
        raise ApiError(
            404,
            "unknown_sample",
            f"unknown sample {shown(name)}; choose one of: {', '.join(CLASSES)}",
        )
    png = await run_in_threadpool(_sample_png, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})
