"""Optimization jobs: queue one, watch it, cancel it, fetch its images, forget it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Response

from schemas.errors import Problem
from schemas.jobs import JobRead, OptimizationCreate
from service.deps import JobsDep
from service.jobs.manager import RETRY_AFTER_S, Submitted

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=100, description="the job's id")]

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


def _job_headers(response: Response, job: JobRead) -> None:
    if not job.status.finished:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)


@router.post(
    "/models/{model}/optimizations",
    status_code=202,
    responses={
        404: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem, "description": "the queue is unavailable or full"},
        200: {"model": JobRead, "description": "an identical request's succeeded job, reused"},
    },
)
async def create_optimization(
    model: str,
    body: Annotated[OptimizationCreate, Body(openapi_examples=_EXAMPLES)],
    jobs: JobsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="the same key and body give back the same job",
        ),
    ] = None,
    cache_control: Annotated[
        str | None,
        Header(
            description="'no-cache' runs the job again even when an identical request has "
            "succeeded before (otherwise that job is answered, with 200)"
        ),
    ] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> JobRead:
    """Queue an activation-maximization job; poll the job at `Location`."""
    reuse = not any(d in (cache_control or "").lower() for d in ("no-cache", "no-store"))
    # Keys are scoped by caller: one client's key never returns another client's job.
    job, submitted = await jobs.submit(
        model, body, idempotency_key, scope=x_api_key or "", reuse=reuse
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if submitted == Submitted.REPLAYED:
        response.headers["Idempotent-Replayed"] = "true"
    elif submitted == Submitted.REUSED:
        # Finished already: the result of an identical request, nothing was queued.
        response.status_code = 200
        response.headers["Cnnviz-Reused"] = "true"
    _job_headers(response, job)
    return job


@router.get("/jobs/{job_id}", responses={404: {"model": Problem}, 503: {"model": Problem}})
async def read_job(job_id: JobId, jobs: JobsDep, response: Response) -> JobRead:
    """The job: status, progress, error, and the result once it has succeeded."""
    job = await jobs.read(job_id)
    _job_headers(response, job)
    return job


@router.post(
    "/jobs/{job_id}/cancel",
    responses={
        202: {"description": "cancel asked; the job stops within a few steps"},
        404: {"model": Problem},
        409: {"model": Problem},
    },
)
async def cancel_job(job_id: JobId, jobs: JobsDep, response: Response) -> JobRead:
    """Stop a job: a queued one never starts, a running one stops within a few steps."""
    job = await jobs.cancel(job_id)
    if not job.status.finished:
        response.status_code = 202
    _job_headers(response, job)
    return job


@router.delete(
    "/jobs/{job_id}", status_code=204, responses={404: {"model": Problem}, 409: {"model": Problem}}
)
async def delete_job(job_id: JobId, jobs: JobsDep) -> Response:
    """Forget a finished job and its images."""
    await jobs.delete(job_id)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": Problem}},
)
async def preview_job(job_id: JobId, jobs: JobsDep) -> Response:
    """The latest image grid of a running job, as a PNG (one every few seconds)."""
    png = await jobs.preview(job_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
