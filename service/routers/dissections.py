"""Dissection jobs (queued by the generic submit route of their row): draw a unit's top images."""

from __future__ import annotations

from fastapi import APIRouter, Response

from schemas.dissection import DissectionGridRead, DissectionResult
from service.dissection import find_unit, render
from service.routers.jobs import PICTURE_RESPONSES
from service.routers.unit_pictures import UnitPicturesDep
from workers.kinds.dissection import Dissection

router = APIRouter(prefix="/jobs", tags=["dissection"])


@router.get(
    "/{job_id}/dissections/{layer}/{channel}",
    response_model=DissectionGridRead,
    responses=PICTURE_RESPONSES,
)
async def read_dissection(unit: UnitPicturesDep) -> Response:
    """A unit's top images with its binarised mask and its label's concept mask drawn over
    them. PNG with `Accept: image/png`, else JSON (the unit's label and score with it)."""
    result = await unit.result(Dissection.name, DissectionResult, "dissection pictures")
    found = find_unit(result, unit.layer, unit.channel)  # a 4xx before any drawing
    return await unit.draw(render, result, unit.layer, unit.channel, found)
