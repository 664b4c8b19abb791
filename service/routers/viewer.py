"""The viewer: one page, served by the service itself, with its assets (no CDN, no build)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from service.docs import PAGE_CSP

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
VIEWER_ASSETS = "/static/viewer"
_PAGE = STATIC_DIR / "viewer" / "index.html"
_LAYER_PAGE = STATIC_DIR / "viewer" / "layer.html"

router = APIRouter(include_in_schema=False)


def _page(page: Path = _PAGE) -> FileResponse:
    # The page is small and changes with the service: revalidate rather than cache blindly.
    return FileResponse(
        page,
        media_type="text/html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
    )


@router.get("/")
async def viewer() -> FileResponse:
    """Pick a model and an image, look at feature maps; optimize a unit and watch it."""
    return _page()


@router.get("/units/{model}/{layer}/{channel}")
async def unit(model: str, layer: str, channel: Annotated[int, PathParam(ge=0)]) -> FileResponse:
    """A unit's own page (Microscope-style): the same page, opened on that unit."""
    return _page()


@router.get("/layers/{model}/{layer}")
async def layer(model: str, layer: str) -> FileResponse:
    """A dissected layer on one page (``?job={id}``): units sorted by score, with their
    labels and top images; without a job, a form that starts one."""
    return _page(_LAYER_PAGE)
