"""Which answers are gzipped: JSON and text, but not JSON that is mostly pictures.

A feature-map or attribution answer is a little JSON around base64 PNGs. PNG is already
deflate-compressed, so gzip wins back little more than base64's third, yet it costs about
as long as encoding the PNG: 1.6 ms of a 22 ms resnet18 ``layer2`` answer on the event loop,
paid by every client and, on a small machine, by the cores the models run on (and the client
spends about as long again inflating it). Those routes answer uncompressed; every other
answer goes through Starlette's GZip middleware as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PICTURE_ANSWERS", "SelectiveGZip"]

# POST /v1/models/{model}/feature-maps and /attributions: JSON made of base64 PNGs.
PICTURE_ANSWERS = (
    re.compile(r"/v1/models/[^/]+/feature-maps"),
    re.compile(r"/v1/models/[^/]+/attributions"),
)


class SelectiveGZip(GZipMiddleware):
    """Starlette's :class:`GZipMiddleware`, except for paths that fully match ``skip``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        minimum_size: int,
        compresslevel: int,
        exclude_content_types: tuple[str, ...],
        skip: Iterable[re.Pattern[str]] = PICTURE_ANSWERS,
    ) -> None:
        super().__init__(
            app,
            minimum_size=minimum_size,
            compresslevel=compresslevel,
            exclude_content_types=exclude_content_types,
        )
        self.skip = tuple(skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if any(pattern.fullmatch(path) for pattern in self.skip):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
