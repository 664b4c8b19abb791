"""Cross-origin calls from browser apps on other origins (``CNNVIZ_CORS_ORIGINS``).

A browser hides every response header from a cross-origin script unless the server exposes
it: the job's ``Location``, ``Retry-After`` and the grid layout of a PNG answer are the ones a
client needs.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "ETag",
    "X-Request-ID",
    "Cnnviz-Reused",
    "Idempotent-Replayed",
    "X-Layer",
    "X-Layer-Shape",
    "X-Grid-Rows",
    "X-Grid-Columns",
    "X-Grid-Tile",
    "X-Grid-Padding",
    "X-Grid-Channels",
    "X-Precision",
]


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Allow ``origins`` (``["*"]``: any) to call the API; nothing when empty."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=[
            "Content-Type",
            "X-API-Key",
            "Idempotency-Key",
            "Cache-Control",
            "X-Request-ID",
            "Accept",
        ],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
