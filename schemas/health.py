"""Liveness and readiness: what GET /healthz and GET /readyz answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Ready or not; the checks only for a caller with a valid key (or when keys are off)."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]] | None = Field(
        default=None, description="each check with `ok` and details; callers with a key only"
    )
