"""A job's result as files: the grid and each unit as PNGs (immutable, with ETags)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from schemas.errors import Problem
from service.deps import JobsDep
from service.jobs.results import immutable_response, result_png, unit_png
from service.routers.jobs import JobId

router = APIRouter(tags=["jobs"])

_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the PNG (ETag; 304 on If-None-Match)"},
    304: {"description": "the client's copy (If-None-Match) is current"},
    404: {"model": Problem},
    409: {"model": Problem, "description": "the job has not succeeded"},
}


@router.get("/jobs/{job_id}/result.png", response_class=Response, responses=_PNG)
async def job_result_png(job_id: JobId, jobs: JobsDep, request: Request) -> Response:
    """The result grid of a succeeded job: every unit, tiled in order."""
    job = await jobs.read(job_id)
    return immutable_response(request, result_png(job), "image/png")


@router.get("/jobs/{job_id}/units/{index}.png", response_class=Response, responses=_PNG)
async def job_unit_png(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, description="the picture's place in `result.units`")],
    jobs: JobsDep,
    request: Request,
) -> Response:
    """One picture of a succeeded job's result (``result.units[index]``)."""
    job = await jobs.read(job_id)
    return immutable_response(request, unit_png(job, index), "image/png")
