"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas.health import Health, Readiness
from service.deps import JobsDep, TrustedDep
from service.readiness import ModelReadiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "not ready; the checks say why"}},
)
async def readyz(request: Request, jobs: JobsDep, trusted: TrustedDep) -> JSONResponse:
    """Models loadable, job queue reachable, a worker seen; from state, never a torch slot."""
    models: ModelReadiness = request.app.state.models_ready
    checks: dict[str, dict[str, Any]] = {"models": models.check()}
    checks.update(await jobs.readiness())
    ready = all(check.get("ok", False) for check in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks if trusted else None)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)
