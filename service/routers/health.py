"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cnnviz.models import BUILTIN_MODEL
from service.deps import JobsDep, PoolDep, RegistryDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready; the checks say why"}})
async def readyz(registry: RegistryDep, pool: PoolDep, jobs: JobsDep) -> JSONResponse:
    """Models loadable, job queue reachable, a worker listening."""
    checks: dict[str, Any] = {}
    try:
        await pool.run(registry.get, BUILTIN_MODEL)
        checks["models"] = {"ok": True, "errors": registry.errors}
    except Exception as exc:  # readiness reports every failure rather than raising it
        checks["models"] = {"ok": False, "reason": str(exc)}
    checks.update(await jobs.readiness())
    ready = all(check.get("ok", False) for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
