"""Push: a job's progress and final state as Server-Sent Events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from schemas.errors import Problem
from service.deps import JobsDep, OwnerDep, SettingsDep
from service.jobs.events import job_events
from service.routers.jobs import JobId

router = APIRouter(prefix="/jobs", tags=["jobs"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "`progress` events (the job without its result) while it runs, one "
        "`end` event with the final state, then the stream ends; `: heartbeat` comments "
        "while nothing changes; an `expired` event after CNNVIZ_EVENTS_MAX_SECONDS",
    },
    404: {"model": Problem},
    503: {"model": Problem},
}


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=_RESPONSES)
async def job_event_stream(
    job_id: JobId, jobs: JobsDep, owner: OwnerDep, settings: SettingsDep
) -> StreamingResponse:
    """The job's progress, then its final state, as Server-Sent Events."""
    first = await jobs.read(job_id, owner)  # 404 before the stream starts
    stream = job_events(
        jobs,
        first,
        owner=owner,
        poll_s=settings.events_poll_interval,
        heartbeat_s=settings.events_heartbeat_interval,
        max_s=settings.events_max_seconds,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
