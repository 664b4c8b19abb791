"""A job's result as files: the grid and each unit as PNGs, and its raw float tensors
(immutable, with ETags)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response

from schemas.errors import Problem
from service.deps import JobsDep, OwnerDep
from service.errors import ApiError
from service.jobs.results import immutable_response, require_succeeded, result_png, unit_png
from service.raw import MEDIA_TYPE, RawFormat, convert
from service.routers.jobs import JobId

router = APIRouter(prefix="/jobs", tags=["jobs"])

_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the PNG (ETag; 304 on If-None-Match)"},
    304: {"description": "the client's copy (If-None-Match) is current"},
    404: {"model": Problem},
    409: {"model": Problem, "description": "the job has not succeeded"},
}


@router.get("/{job_id}/result.png", response_class=Response, responses=_PNG)
async def job_result_png(
    job_id: JobId, jobs: JobsDep, owner: OwnerDep, request: Request
) -> Response:
    """The result grid of a succeeded job: every unit, tiled in order."""
    job = await jobs.read(job_id, owner)
    return immutable_response(request, result_png(job), "image/png")


@router.get("/{job_id}/units/{index}.png", response_class=Response, responses=_PNG)
async def job_unit_png(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, description="the picture's place in `result.units`")],
    jobs: JobsDep,
    owner: OwnerDep,
    request: Request,
) -> Response:
    """One picture of a succeeded job's result (``result.units[index]``)."""
    job = await jobs.read(job_id, owner)
    return immutable_response(request, unit_png(job, index), "image/png")


_RAW: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-npy": {}, "application/vnd.safetensors": {}},
        "description": "float32 tensors (ETag; 304 on If-None-Match)",
    },
    304: {"description": "the client's copy (If-None-Match) is current"},
    404: {"model": Problem, "description": "unknown job, or no raw tensors kept"},
    409: {"model": Problem, "description": "the job has not succeeded"},
}


async def _raw(
    job_id: str, jobs: JobsDep, owner: str, request: Request, raw: RawFormat
) -> Response:
    job = await jobs.read(job_id, owner)
    require_succeeded(job)
    stored = await jobs.arrays(job_id)
    if stored is None:
        raise ApiError(
            404,
            "no_arrays",
            f"job {job_id!r} ({job.kind}) kept no raw tensors: its kind keeps none, or they "
            "were over its size limit (see docs/jobs.md, 'Results as files')",
        )
    data = await anyio.to_thread.run_sync(convert, stored, raw, f"job {job_id!r}")
    return immutable_response(request, data, MEDIA_TYPE[raw])


@router.get("/{job_id}/result.npy", response_class=Response, responses=_RAW)
async def job_result_npy(
    job_id: JobId, jobs: JobsDep, owner: OwnerDep, request: Request
) -> Response:
    """The result's raw tensor as .npy: an optimization's images, ``(N, C, S, S)`` float32
    in [0, 1], in the order of ``result.units``."""
    return await _raw(job_id, jobs, owner, request, "npy")


@router.get("/{job_id}/result.safetensors", response_class=Response, responses=_RAW)
async def job_result_safetensors(
    job_id: JobId, jobs: JobsDep, owner: OwnerDep, request: Request
) -> Response:
    """The result's raw tensors as safetensors (an optimization's: ``images``)."""
    return await _raw(job_id, jobs, owner, request, "safetensors")
