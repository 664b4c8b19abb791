"""A succeeded job's result as files: the grid and each unit as PNGs, with validators.

A result never changes once written (the final write happens once), so its files carry a
strong ETag (a digest of the bytes) and may be cached for good; a request whose
``If-None-Match`` names the ETag gets a 304 and no body. The job JSON shows the pictures as
URLs, and as inline base64 too when they are small (or when asked for).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request, Response

from schemas.jobs import JobRead, JobStatus, job_path
from service.errors import ApiError
from service.jobs.manager import RETRY_AFTER_S
from workers.kinds import ResultPictures, get_kind

# Finished results are immutable; private: a job is its owner's (API keys).
IMMUTABLE = "private, max-age=31536000, immutable"


def present(
    job: JobRead[Any, Any], inline: bool | None, inline_max_bytes: int
) -> JobRead[Any, Any]:
    """The job as the API shows it: picture URLs, and base64 pictures when ``inline`` (by
    default: when they take at most ``inline_max_bytes`` characters in all)."""
    if job.result is None:
        return job
    kind = get_kind(job.kind)
    if inline is None:
        pictures = kind.pictures(job.result)
        inline = pictures is None or pictures.size <= inline_max_bytes
    return job.model_copy(update={"result": kind.present(job.result, job.id, inline)})


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags


def immutable_response(request: Request, data: bytes, media_type: str) -> Response:
    """``data`` with its ETag and cache headers, or a 304 when the client has it already."""
    etag = etag_of(data)
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def finished_job_headers(request: Request, response: Response, job: JobRead[Any, Any]) -> bool:
    """Validators for a finished job's JSON (weak: gzip may re-encode it); True when the
    client's copy is current (answer 304)."""
    if not job.status.finished or job.finished_at is None:
        return False
    inline = request.query_params.get("inline", "")
    etag = f'W/"{job.id}-{job.finished_at.timestamp():.6f}-{inline}"'
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "private, no-cache"  # revalidate: a job can be deleted
    return _matches(request.headers.get("if-none-match"), etag.removeprefix("W/"))


def require_succeeded(job: JobRead[Any, Any]) -> None:
    """A 409 unless the job has succeeded (with Retry-After while it may still)."""
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        headers = None if job.status.finished else {"Retry-After": str(RETRY_AFTER_S)}
        hint = (
            f"; GET {job_path(job.id)}/preview shows it as it is now"
            if not job.status.finished
            else ""
        )
        raise ApiError(
            409,
            "job_not_succeeded",
            f"job {job.id!r} is {job.status.value}: only a succeeded job has a result{hint}",
            headers,
        )


def pictures_of(job: JobRead[Any, Any]) -> ResultPictures:
    """The pictures of a succeeded job; a 409 while it has none yet, 404 for a kind without."""
    require_succeeded(job)
    kind = get_kind(job.kind)
    pictures = kind.pictures(job.result)
    if pictures is None:
        elsewhere = kind.pictures_elsewhere.replace("{id}", job.id)
        raise ApiError(
            404,
            "no_pictures",
            f"job {job.id!r} is of kind {job.kind!r}, whose result holds no pictures: "
            + (f"they are drawn by {elsewhere}" if elsewhere else f"GET {job_path(job.id)}"),
        )
    return pictures


def result_png(job: JobRead[Any, Any]) -> bytes:
    return pictures_of(job).grid_png()


def unit_png(job: JobRead[Any, Any], index: int) -> bytes:
    units = pictures_of(job).units
    if not 0 <= index < len(units):
        raise ApiError(
            404,
            "unknown_unit",
            f"job {job.id!r} has {len(units)} pictures, numbered 0 to {len(units) - 1}; "
            f"there is no picture {index}",
        )
    return pictures_of(job).unit_png(index)
