"""The attribution methods: one list, which the viewer and the client read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from schemas.attributions import AttributionMethodList
from schemas.errors import Problem
from service.attributions import method_list
from service.deps import RegistryDep

router = APIRouter(prefix="/attribution-methods", tags=["attributions"])


@router.get("", responses={404: {"model": Problem, "description": "Unknown model"}})
async def list_attribution_methods(
    registry: RegistryDep,
    model: Annotated[
        str | None,
        Query(max_length=256, description="a model: the costs in images for its input size"),
    ] = None,
) -> AttributionMethodList:
    """Every attribution method with its options and cost, and the faithfulness metrics."""
    return method_list(model, None if model is None else registry.spec(model))
