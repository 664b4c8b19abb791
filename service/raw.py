"""Raw float tensors as files, for those who want the numbers and not a 255-level PNG.

Two formats: ``.npy`` (one array; ``numpy.load``) and safetensors (named arrays;
``safetensors.numpy.load``). A client asks with ``?format=npy|safetensors`` or with
``Accept: application/x-npy`` / ``application/vnd.safetensors``.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import safetensors.numpy
from fastapi import Request

from service.errors import ApiError

NPY = "application/x-npy"
SAFETENSORS = "application/vnd.safetensors"
RAW_MEDIA_TYPES = (NPY, SAFETENSORS)

RawFormat = Literal["npy", "safetensors"]
_BY_MEDIA: dict[str, RawFormat] = {NPY: "npy", SAFETENSORS: "safetensors"}
MEDIA_TYPE: dict[RawFormat, str] = {"npy": NPY, "safetensors": SAFETENSORS}


def wanted_raw(request: Request, others: tuple[str, ...] = ("json", "png")) -> RawFormat | None:
    """The raw format a request asks for (``format`` first, then ``Accept``), or None.

    ``others`` are the ``format`` values the route answers otherwise; any other is a 422.
    """
    asked = request.query_params.get("format")
    if asked is not None:
        if asked in _BY_MEDIA.values():
            return asked  # type: ignore[return-value]
        if asked in others:
            return None
        choices = ", ".join([*others, "npy", "safetensors"])
        raise ApiError(422, "invalid_format", f"unknown format {asked[:50]!r}; one of: {choices}")
    accept = request.headers.get("accept", "").lower()
    for media, raw in _BY_MEDIA.items():
        if media in accept:
            return raw
    return None


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def encode(arrays: dict[str, np.ndarray], raw: RawFormat, what: str) -> bytes:
    """``arrays`` in ``raw``: safetensors holds them all, npy exactly one (else a 406 that
    names them)."""
    if raw == "safetensors":
        return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    if len(arrays) != 1:
        raise ApiError(
            406,
            "not_acceptable",
            f".npy holds one array, and {what} has {len(arrays)} ({', '.join(arrays)}); ask for "
            "one, or for safetensors (format=safetensors)",
        )
    (array,) = arrays.values()
    return npy_bytes(array)


def convert(stored: bytes, raw: RawFormat, what: str) -> bytes:
    """Stored safetensors bytes in ``raw``."""
    if raw == "safetensors":
        return stored
    return encode(safetensors.numpy.load(stored), raw, what)
