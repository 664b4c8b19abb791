"""The routers of the API, one per resource, gathered here."""

from fastapi import APIRouter, Depends

from service.deps import require_api_key
from service.routers import (
    attribution_methods,
    attributions,
    datasets,
    dissections,
    exemplars,
    feature_maps,
    health,
    job_events,
    job_kinds,
    job_results,
    jobs,
    models,
    samples,
    weights,
)

api_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
api_router.include_router(models.router)
api_router.include_router(feature_maps.router)
api_router.include_router(samples.router)
api_router.include_router(job_kinds.router)  # every job kind's submit route
api_router.include_router(exemplars.router)
api_router.include_router(dissections.router)
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(job_results.router)
api_router.include_router(job_events.router)
api_router.include_router(weights.router)
api_router.include_router(attributions.router)
api_router.include_router(attribution_methods.router)

__all__ = ["api_router", "health"]
