"""Dissection jobs (queued by the generic submit route of their row): draw a unit's top images."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from schemas.dissection import DissectionGridRead, DissectionResult
from service.deps import DatasetsDep, JobsDep, OwnerDep, PoolDep, RegistryDep
from service.dissection import find_unit, render
from service.routers.jobs import PICTURE_RESPONSES, JobId, UnitIndex, picture_or_json
from workers.kinds.dissection import Dissection

router = APIRouter(prefix="/jobs", tags=["dissection"])


@router.get(
    "/{job_id}/dissections/{layer}/{channel}",
    response_model=DissectionGridRead,
    responses=PICTURE_RESPONSES,
)
async def read_dissection(
    job_id: JobId,
    layer: str,
    channel: UnitIndex,
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
    return picture_or_json(request, png, read)
