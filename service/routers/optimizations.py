"""Optimization jobs: queue one (watch it under /v1/jobs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from schemas.jobs import JobRead
from schemas.optimization import OptimizationCreate, OptimizationResult
from service.deps import JobsDep, OwnerDep
from service.routers.jobs import (
    SUBMIT_RESPONSES,
    CacheControl,
    IdempotencyKey,
    submit_job,
)
from workers.kinds.optimization import Optimization

router = APIRouter(tags=["jobs"])

OptimizationRead = JobRead[OptimizationCreate, OptimizationResult]

# Examples for /docs, each a request that works on the built-in model as it is.
_EXAMPLES = {
    "channels": {
        "summary": "Four channels of a layer, one image each",
        "value": {"layer": "block3.relu", "channels": [0, 1, 2, 3], "steps": 256, "seed": 0},
    },
    "whole layer": {
        "summary": "Every channel of a layer in one job",
        "value": {"layer": "block2.relu", "channels": "all", "steps": 128},
    },
    "neuron": {
        "summary": "One neuron: a channel at a position",
        "value": {"layer": "block3.relu", "neuron": {"channel": 5, "y": 8, "x": 8}},
    },
    "class": {
        "summary": "What the model calls a triangle (class 2)",
        "value": {"layer": "fc", "objective": "class_logit", "channels": [2]},
    },
    "diversity": {
        "summary": "Three different images of one channel",
        "value": {
            "layer": "block2.relu",
            "channels": [4],
            "images_per_unit": 3,
            "diversity": 1.0,
        },
    },
    "deepdream": {
        "summary": "DeepDream: the whole layer's energy",
        "value": {"layer": "block3.relu", "objective": "layer", "steps": 128},
    },
}


@router.post(
    "/models/{model}/optimizations",
    status_code=202,
    responses=SUBMIT_RESPONSES,
)
async def create_optimization(
    model: str,
    body: Annotated[OptimizationCreate, Body(openapi_examples=_EXAMPLES)],
    jobs: JobsDep,
    owner: OwnerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    cache_control: CacheControl = None,
) -> OptimizationRead:
    """Queue an activation-maximization job; poll the job at `Location`."""
    return await submit_job(
        jobs, Optimization.name, model, body, response, idempotency_key, cache_control, owner
    )
