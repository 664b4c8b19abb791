"""Exemplar jobs: queue one (watch it under /v1/jobs), then render a channel's images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from schemas.errors import Problem
from schemas.exemplars import ExemplarGridQuery, ExemplarGridRead, ExemplarsResult
from service.deps import DatasetsDep, JobsDep, OwnerDep, PoolDep, RegistryDep
from service.exemplars import render
from service.feature_maps import wants_png
from service.routers.jobs import (
    JobId,
)
from workers.kinds.exemplars import Exemplars

router = APIRouter(prefix="/jobs", tags=["exemplars"])


@router.get(
    "/{job_id}/exemplars/{layer}/{channel}",
    response_model=ExemplarGridRead,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": Problem},
        409: {"model": Problem, "description": "the job has not succeeded (yet)"},
        422: {"model": Problem},
    },
)
async def read_exemplars(
    job_id: JobId,
    layer: str,
    channel: Annotated[int, Path(ge=0, le=1_000_000)],
    query: Annotated[ExemplarGridQuery, Query()],
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    registry: RegistryDep,
    datasets: DatasetsDep,
    pool: PoolDep,
) -> Response:
    """A grid of a channel's top (or bottom) images: whole, cropped to the receptive field
    of the maximum, or masked by the activation. PNG with `Accept: image/png`, else JSON."""
    result = await jobs.succeeded(job_id, owner, Exemplars.name, "exemplar grids")
    assert isinstance(result, ExemplarsResult)
    png, read = await pool.run(
        render, registry, datasets, result, layer, channel, query.mode, query.which
    )
    if wants_png(request.headers.get("accept")):
        return Response(png, media_type="image/png")
    return Response(read.model_dump_json(), media_type="application/json")
