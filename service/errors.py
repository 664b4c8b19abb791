"""The one place where errors become HTTP responses (RFC 9457 problem details)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnviz.data.datasets import UnknownDatasetError, UnknownImageError
from cnnviz.errors import (
    SHOWN_CHARACTERS,
    CnnvizError,
    ImageTooLargeError,
    InvalidArgumentError,
    InvalidImageError,
    LayerShapeError,
    ModelChangedError,
    ModelLoadError,
    ModelNameTakenError,
    RegistryConfigError,
    UnknownLayerError,
    UnknownModelError,
    shown,
)
from schemas.errors import Problem, with_listing
from service.concurrency import ServiceBusy
from service.observability import count_busy

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_ERRORS = 20  # per-field problems listed in a 422

# Most specific first: the first class an error is an instance of gives the status.
_CORE_STATUS: list[tuple[type[CnnvizError], int]] = [
    (UnknownModelError, 404),
    (UnknownDatasetError, 404),
    (UnknownImageError, 404),
    (ModelNameTakenError, 409),
    (ModelChangedError, 409),
    (UnknownLayerError, 422),
    (LayerShapeError, 422),
    (ImageTooLargeError, 413),
    (InvalidImageError, 422),
    (InvalidArgumentError, 422),
    (ModelLoadError, 503),
    (RegistryConfigError, 503),
]


class ApiError(Exception):
    """An error of the service itself, with its status, code and message."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(detail)


def problem(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = Problem(
        type=f"urn:cnnviz:error:{code}",
        title=HTTPStatus(status).phrase,
        status=status,
        code=code,
        detail=detail,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_JSON,
    )


def _loc(error: dict[str, Any]) -> list[str | int]:
    """Where an error is, with names cut short: an unknown field's name is the caller's."""
    return [p if isinstance(p, int) else _cut(str(p)) for p in error.get("loc", ())]


def _cut(name: str) -> str:
    return name if len(name) <= SHOWN_CHARACTERS else shown(name)


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in _loc(error) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("msg", "type")
    return [{"loc": _loc(e), **{k: e[k] for k in keep if k in e}} for e in errors[:MAX_ERRORS]]


def _method_not_allowed(request: Request, fallback: Mapping[str, str] | None) -> JSONResponse:
    """405 with ``Allow`` naming every method of the path, as the OpenAPI document has them.

    Starlette names only the methods of the first route whose path matched, and one path may
    have several routes (``GET`` and ``DELETE /v1/jobs/{id}``).
    """
    allowed: set[str] = set()
    for template, methods in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            allowed |= {method.upper() for method in methods}
    methods = ", ".join(sorted(allowed)) or (fallback or {}).get("Allow", "")
    return problem(
        405,
        "method_not_allowed",
        f"{shown(request.method)} is not allowed on {shown(request.url.path)}; use {methods}",
        {"Allow": methods},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map core errors, validation errors and HTTP errors to problem+json."""

    @app.exception_handler(CnnvizError)
    async def _core(_request: Request, exc: CnnvizError) -> JSONResponse:
        status = next((s for cls, s in _CORE_STATUS if isinstance(exc, cls)), 400)
        if status >= 500:
            log.warning("%s", exc)
        return problem(status, exc.code, with_listing(str(exc), exc.listing))

    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(ServiceBusy)
    async def _busy(request: Request, exc: ServiceBusy) -> JSONResponse:
        count_busy(request)
        return problem(503, "busy", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return problem(
            422, "invalid_request", _validation_detail(errors), errors=_jsonable_errors(errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or (
            HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        )
        if exc.status_code == 405:
            return _method_not_allowed(request, exc.headers)
        return problem(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "internal_error", "an unexpected error occurred; it has been logged")
