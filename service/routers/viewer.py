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

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    # The page is small and changes with the service: revalidate rather than cache blindly.
    return FileResponse(
        _PAGE,
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
