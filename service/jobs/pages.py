"""Opaque page tokens of job lists (AIP-158 style): where a page ended, base64 of JSON."""

from __future__ import annotations

import base64
import json

from service.errors import ApiError
from workers.records import Cursor


def encode_token(cursor: Cursor) -> str:
    """An opaque page token: where a page ended."""
    raw = json.dumps([cursor[0], cursor[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Cursor:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return float(created_at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise ApiError(
            422,
            "invalid_page_token",
            f"page_token {token[:40]!r} is not one this service gave; pass the "
            "next_page_token of the previous page, or leave it out for the first",
        ) from exc
