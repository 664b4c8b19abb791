"""Dissection jobs (queued by the generic submit route of their row): draw a unit's top images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from schemas.dissection import DissectionGridRead, DissectionResult
from schemas.errors import Problem
from service.deps import DatasetsDep, JobsDep, OwnerDep, PoolDep, RegistryDep
from service.dissection import find_unit, render
from service.feature_maps import wants_png
from service.routers.jobs import JobId
from workers.kinds.dissection import Dissection

router = APIRouter(prefix="/jobs", tags=["dissection"])


@router.get(
    "/{job_id}/dissections/{layer}/{channel}",
    response_model=DissectionGridRead,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": Problem},
        409: {"model": Problem, "description": "the job has not succeeded (yet)"},
        422: {"model": Problem},
    },
)
async def read_dissection(
    job_id: JobId,
    layer: str,
    channel: Annotated[int, Path(ge=0, le=1_000_000)],
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    registry: RegistryDep,
    datasets: DatasetsDep,
    pool: PoolDep,
) -> Response:
    """A unit's top images with its binarised mask and its label's concept mask drawn over
    them. PNG with `Accept: image/png`, else JSON (the unit's label and score with it)."""
    result = await jobs.succeeded(job_id, owner, Dissection.name, "dissection pictures")
    assert isinstance(result, DissectionResult)
    find_unit(result, layer, channel)  # a bad address is a 4xx before any drawing
    png, read = await pool.run(render, registry, datasets, result, layer, channel)
    if wants_png(request.headers.get("accept")):
        return Response(png, media_type="image/png")
    return Response(read.model_dump_json(), media_type="application/json")
