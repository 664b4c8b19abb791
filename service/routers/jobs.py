"""Jobs of every kind: watch one, cancel it, fetch its preview, forget it.

Each kind queues its jobs with a route made from its row (``service/routers/job_kinds.py``)
through :func:`submit_job`, so submission behaves the same for all: 202 and ``Location``,
idempotency keys, reuse of an identical succeeded job.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel

from schemas.errors import Problem
from schemas.jobs import JobList, JobRead, JobStatus
from schemas.routes import KindName
from service.deps import JobsDep, OwnerDep
from service.feature_maps import wants_png
from service.jobs.manager import RETRY_AFTER_S, JobManager, Submitted
from service.jobs.results import finished_job_headers, present
from service.routers.responses import PNG_CONTENT, problem
from workers.logs import set_job_id
from workers.records import JobFilter

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

JobId = Annotated[str, Path(min_length=1, max_length=100, description="the job's id")]
UnitIndex = Annotated[int, Path(ge=0, le=1_000_000)]

# The picture of a unit of a succeeded job (exemplars, dissection): PNG or JSON.
PICTURE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": PNG_CONTENT},
    404: {"model": Problem},
    409: problem("the job has not succeeded (yet)"),
    422: {"model": Problem},
}


def picture_or_json(request: Request, png: bytes, read: BaseModel) -> Response:
    """``png`` when the request's ``Accept`` prefers it, else ``read`` as JSON."""
    if wants_png(request.headers.get("accept")):
        return Response(png, media_type="image/png")
    return Response(read.model_dump_json(), media_type="application/json")


IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        description="the same key and body give back the same job",
    ),
]
CacheControl = Annotated[
    str | None,
    Header(
        description="'no-cache' runs the job again even when an identical request has "
        "succeeded before (otherwise that job is answered, with 200)"
    ),
]
Inline = Annotated[
    bool | None,
    Query(
        description="true: the result's pictures as base64 in the JSON; false: only their "
        "URLs; default: inline when they are small (CNNVIZ_INLINE_RESULT_MAX_BYTES)"
    ),
]

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem},
    409: {
        "model": Problem,
        "description": "a job the request names has not succeeded, or ran on other weights",
    },
    422: {"model": Problem},
    429: {"model": Problem, "description": "the caller has its most jobs queued or running"},
    503: {"model": Problem, "description": "the queue is unavailable or full"},
    200: {"description": "an identical request's succeeded job, reused"},
}


def _job_headers(response: Response, job: JobRead[Any, Any]) -> None:
    if not job.status.finished:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)


async def submit_job(
    jobs: JobManager,
    kind: str,
    model: str,
    body: BaseModel,
    response: Response,
    idempotency_key: str | None,
    cache_control: str | None,
    owner: str,
) -> JobRead[Any, Any]:
    """Queue a job of ``kind`` for ``owner``: 202 with Location, or an earlier job of the same
    owner (replayed, reused)."""
    reuse = not any(d in (cache_control or "").lower() for d in ("no-cache", "no-store"))
    job, submitted = await jobs.submit(kind, model, body, idempotency_key, owner=owner, reuse=reuse)
    set_job_id(job.id)  # this request's remaining log lines are about the job
    log.info("%s job %s (%s, model %r)", kind, job.id, submitted.value, model)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if submitted == Submitted.REPLAYED:
        response.headers["Idempotent-Replayed"] = "true"
    elif submitted == Submitted.REUSED:
        # Finished already: the result of an identical request, nothing was queued.
        response.status_code = 200
        response.headers["Cnnviz-Reused"] = "true"
    _job_headers(response, job)
    return present(job, None, jobs.inline_max_bytes)


@router.get("", responses={422: {"model": Problem}, 503: {"model": Problem}})
async def list_jobs(
    jobs: JobsDep,
    owner: OwnerDep,
    kind: Annotated[KindName | None, Query(max_length=100, description="only this kind")] = None,
    model: Annotated[str | None, Query(max_length=200, description="only this model")] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    page_size: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    page_token: Annotated[
        str | None, Query(max_length=400, description="next_page_token of the last page")
    ] = None,
) -> JobList:
    """The caller's jobs (its API key's; everyone's without keys), newest first, in pages,
    without their results."""
    chosen = JobFilter(kind=kind, model=model, status=status)
    return await jobs.owned(owner, chosen, page_size, page_token)


@router.get(
    "/{job_id}",
    response_model=JobRead[Any, Any],
    responses={
        304: {"description": "a finished job the client has (If-None-Match)"},
        404: {"model": Problem},
        503: {"model": Problem},
    },
)
async def read_job(
    job_id: JobId,
    jobs: JobsDep,
    owner: OwnerDep,
    request: Request,
    response: Response,
    inline: Inline = None,
) -> Any:
    """The job: status, progress, error, and the result once it has succeeded."""
    job = await jobs.read(job_id, owner)
    _job_headers(response, job)
    if finished_job_headers(request, response, job):
        return Response(status_code=304, headers=dict(response.headers))
    return present(job, inline, jobs.inline_max_bytes)


@router.post(
    "/{job_id}/cancel",
    responses={
        202: {"description": "cancel asked; the job stops within a few steps"},
        404: {"model": Problem},
        409: {"model": Problem},
    },
)
async def cancel_job(
    job_id: JobId, jobs: JobsDep, owner: OwnerDep, response: Response
) -> JobRead[Any, Any]:
    """Stop a job: a queued one never starts, a running one stops within a few steps."""
    job = await jobs.cancel(job_id, owner)
    if not job.status.finished:
        response.status_code = 202
    _job_headers(response, job)
    return job


@router.delete(
    "/{job_id}", status_code=204, responses={404: {"model": Problem}, 409: {"model": Problem}}
)
async def delete_job(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> Response:
    """Forget a finished job and its images."""
    await jobs.delete(job_id, owner)
    return Response(status_code=204)


@router.get(
    "/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": Problem}},
)
async def preview_job(job_id: JobId, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The latest image grid of a running job, as a PNG (one every few seconds); a succeeded
    job's is its result grid."""
    png = await jobs.preview(job_id, owner)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
