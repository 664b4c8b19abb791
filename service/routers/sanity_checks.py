"""Sanity checks of attribution methods (cascading randomization), as jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from schemas.jobs import JobRead
from schemas.sanity import SanityCheckCreate, SanityCheckJobCreate, SanityCheckResult
from service.deps import JobsDep, OwnerDep
from service.routers.jobs import SUBMIT_RESPONSES, CacheControl, IdempotencyKey, submit_job
from workers.kinds.sanity import SanityChecks

router = APIRouter(prefix="/models", tags=["attributions", "jobs"])

SanityCheckJobRead = JobRead[SanityCheckCreate, SanityCheckResult]

# Tested by tests/jobs/test_sanity_jobs.py.
EXAMPLES: dict[str, dict[str, Any]] = {
    "shapes": {
        "summary": "Grad-CAM, saliency and guided Grad-CAM on 8 images of the shapes set",
        "value": {
            "methods": ["gradcam", "saliency", "guided_gradcam"],
            "layer": "block4.relu",
            "dataset": "shapes",
            "max_images": 8,
        },
    },
}


@router.post("/{model}/sanity-checks", status_code=202, responses=SUBMIT_RESPONSES)
async def create_sanity_check(
    model: str,
    body: Annotated[SanityCheckJobCreate, Body(openapi_examples=EXAMPLES)],
    jobs: JobsDep,
    owner: OwnerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    cache_control: CacheControl = None,
) -> SanityCheckJobRead:
    """Queue Adebayo's cascading randomization of attribution methods; poll at `Location`."""
    return await submit_job(
        jobs, SanityChecks.name, model, body, response, idempotency_key, cache_control, owner
    )
