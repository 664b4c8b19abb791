"""The OpenAPI document as the contract a generated client or a fuzzer holds the API to.

FastAPI's document is completed in one pass here:

- every error response is ``application/problem+json`` with the ``Problem`` schema (FastAPI
  declares ``application/json``, and its own ``HTTPValidationError`` for 422);
- the statuses any operation can answer are declared on each: 401 where keys are needed,
  400, 408, 413 and 422 where a body is read, 422 where a parameter is validated, 410 where
  a finished job's result is read (the in-process store may drop old results past its cap);
- with API keys configured, the key is a security scheme (``X-API-Key`` header), required by
  every ``/v1`` operation and optional on ``/readyz`` (which then shows its details).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.errors import PROBLEM_JSON

SECURITY_SCHEME = "ApiKey"
_PROBLEM_REF = "#/components/schemas/Problem"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
# Why an operation may answer each status without saying so itself.
_COMMON = {
    400: "The body is not what its content type says (JSON that does not parse)",
    401: "No valid `X-API-Key`",
    408: "The body did not arrive within the read timeout",
    413: "The body is over the byte limit",
    422: "A parameter or the body is invalid",
    410: "The job finished, but its result was dropped past the in-process store's byte cap",
}
_JOB_READS = "/v1/jobs/{job_id}"


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}},
    }


def _is_problem(response: dict[str, Any]) -> bool:
    for media in response.get("content", {}).values():
        ref = media.get("schema", {}).get("$ref", "")
        if ref == _PROBLEM_REF or ref.rsplit("/", 1)[-1] in _FASTAPI_VALIDATION:
            return True
    return False


def _complete(operation: dict[str, Any], method: str, path: str, keys: bool) -> None:
    responses: dict[str, Any] = operation["responses"]
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400 and _is_problem(response):
            responses[status] = _problem(response.get("description") or _phrase(status))
    common: set[int] = set()
    if keys and path.startswith("/v1/"):
        common.add(401)
    if "requestBody" in operation:
        common |= {400, 408, 413, 422}
    if operation.get("parameters"):
        common.add(422)
    if method == "get" and path.startswith(_JOB_READS):
        common.add(410)
    for code in sorted(common):
        responses.setdefault(str(code), _problem(_COMMON[code]))
    if keys and path.startswith("/v1/"):
        operation["security"] = [{SECURITY_SCHEME: []}]
    elif keys and path == "/readyz":
        operation["security"] = [{}, {SECURITY_SCHEME: []}]


def _phrase(status: str) -> str:
    return HTTPStatus(int(status)).phrase


def contract(app: FastAPI, keys: bool) -> Callable[[], dict[str, Any]]:
    """The ``app.openapi`` function: FastAPI's document, completed once and cached."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                _complete(operation, method, path, keys)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in _FASTAPI_VALIDATION:
            schemas.pop(name, None)
        if keys:
            document["components"]["securitySchemes"] = {
                SECURITY_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "One of the keys in CNNVIZ_API_KEYS",
                }
            }
        app.openapi_schema = document
        return document

    return openapi
