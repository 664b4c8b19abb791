"""Exemplar jobs: queue one (watch it under /v1/jobs), then render a channel's images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from schemas.exemplars import ExemplarGridQuery, ExemplarGridRead, ExemplarsResult
from service.exemplars import find_exemplars, render
from service.routers.jobs import PICTURE_RESPONSES
from service.routers.unit_pictures import UnitPicturesDep
from workers.kinds.exemplars import Exemplars

router = APIRouter(prefix="/jobs", tags=["exemplars"])


@router.get(
    "/{job_id}/exemplars/{layer}/{channel}",
    response_model=ExemplarGridRead,
    responses=PICTURE_RESPONSES,
)
async def read_exemplars(
    unit: UnitPicturesDep, query: Annotated[ExemplarGridQuery, Query()]
) -> Response:
    """A grid of a channel's top (or bottom) images: whole, cropped to the receptive field
    of the maximum, or masked by the activation. PNG with `Accept: image/png`, else JSON."""
    result = await unit.result(Exemplars.name, ExemplarsResult, "exemplar grids")
    found = find_exemplars(result, unit.layer, unit.channel, query.which)  # 4xx before drawing
    return await unit.draw(render, result, unit.layer, unit.channel, query.mode, query.which, found)
