"""Exemplar jobs: queue one (watch it under /v1/jobs), then render a channel's images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from schemas.exemplars import ExemplarGridQuery, ExemplarGridRead, ExemplarsResult
from service.deps import DatasetsDep, JobsDep, OwnerDep, PoolDep, RegistryDep
from service.exemplars import render
from service.routers.jobs import PICTURE_RESPONSES, JobId, UnitIndex, picture_or_json
from workers.kinds.exemplars import Exemplars

router = APIRouter(prefix="/jobs", tags=["exemplars"])


@router.get(
    "/{job_id}/exemplars/{layer}/{channel}",
    response_model=ExemplarGridRead,
    responses=PICTURE_RESPONSES,
)
async def read_exemplars(
    job_id: JobId,
    layer: str,
    channel: UnitIndex,
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
    return picture_or_json(request, png, read)
