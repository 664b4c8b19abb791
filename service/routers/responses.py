"""OpenAPI response declarations that the synchronous picture routes (feature maps,
attributions, filter weights) share: binary answers and the problems every one of them may
answer."""

from __future__ import annotations

from typing import Any

from schemas.errors import Problem

__all__ = ["BUSY", "PNG_CONTENT", "RAW_CONTENT", "UNKNOWN_MODEL", "UPLOAD_PROBLEMS", "problem"]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
PNG_CONTENT: dict[str, Any] = {"image/png": _BINARY}
"""A 200 that may be a PNG (``Accept: image/png``)."""
RAW_CONTENT: dict[str, Any] = {
    **PNG_CONTENT,
    "application/x-npy": _BINARY,
    "application/vnd.safetensors": _BINARY,
}
"""A 200 that may be a PNG or raw float32 tensors (``?format=npy|safetensors``)."""


def problem(description: str) -> dict[str, Any]:
    """A problem+json answer, with what it means here."""
    return {"model": Problem, "description": description}


UNKNOWN_MODEL = problem("Unknown model")
BUSY = problem("Busy (Retry-After) or model unavailable")
UPLOAD_PROBLEMS: dict[int | str, dict[str, Any]] = {
    413: problem("Body over the byte limit, or too many pixels"),
    415: problem("Neither JSON nor multipart"),
}
"""What a route taking an uploaded image may refuse, besides its own 422."""
