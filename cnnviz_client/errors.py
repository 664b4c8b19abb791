"""What the client raises: the service's error answers, and jobs that end without a result."""

from __future__ import annotations

from typing import Any

import httpx

from schemas.jobs import JobRead


class ApiError(Exception):
    """The service answered with an error (problem+json): its status, code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{status} {code}: {detail}")


class JobFailed(Exception):
    """A waited-for job ended without reaching what was waited for (by default: success)."""

    def __init__(self, job: JobRead[Any, Any]) -> None:
        self.job = job
        error = f": {job.error.code}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status.value}{error}")


def raise_for_problem(response: httpx.Response) -> None:
    """:class:`ApiError` from an error answer (its problem+json where it has one)."""
    if response.is_success:
        return
    try:
        body = response.json()
        code, detail = str(body.get("code", "error")), str(body.get("detail", response.text))
    except ValueError:
        code, detail = "error", response.text.strip() or response.reason_phrase
    raise ApiError(response.status_code, code, detail)
