"""The attribution methods: one list, which the viewer and the client read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from schemas.attributions import AttributionMethodList
from service.attributions import method_list
from service.deps import JobsDep, RegistryDep
from service.routers.responses import UNKNOWN_MODEL

router = APIRouter(prefix="/attribution-methods", tags=["attributions"])


@router.get("", responses={404: UNKNOWN_MODEL})
async def list_attribution_methods(
    registry: RegistryDep,
    jobs: JobsDep,
    model: Annotated[
        str | None,
        Query(
            max_length=256,
            description="a model: the costs in images for its input size, and each method's "
            "sanity status on its weights",
        ),
    ] = None,
) -> AttributionMethodList:
    """Every attribution method with its options and cost, and the faithfulness metrics."""
    if model is None:
        return method_list(None, None, {})
    spec = registry.spec(model)
    return method_list(model, spec, await jobs.verdicts(model))
