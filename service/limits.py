"""Limits on request bodies, enforced while they are read: a cap on bytes (chunked bodies
included) and a time limit on reading them (a client that trickles bytes, slowloris)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import problem


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` past the cap.

    An HTTPException, so that FastAPI's body parsing passes it on as it is (it turns other
    exceptions into a 400) and the error handlers answer 413.
    """

    code = "body_too_large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {max_bytes} bytes")


class BodyTimedOut(HTTPException):
    """Raised from ``receive`` when the body has not arrived within the read timeout."""

    code = "body_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s; send it at once",
            {"Connection": "close"},
        )


class BodyLimits:
    """Pure ASGI middleware: 413 when a body exceeds ``max_bytes``, 408 when it has not been
    received ``read_timeout_s`` after the request came in.

    A declared ``Content-Length`` over the cap is refused before a byte is read; otherwise the
    bytes are counted as the app receives them, so a chunked upload cannot get past the cap.
    The timeout bounds the whole body, not the gap between two chunks: a client trickling a
    byte a second would pass any gap limit and hold its connection (and a worker's memory).
    """

    drain_factor = 4
    drain_seconds = 5.0

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout_s: float,
        uploads: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        # (method, path pattern) -> a cap of its own: a model's weights are far larger than
        # any image, and only admins may send them.
        self.uploads = [
            (method, re.compile(pattern), cap) for (method, pattern), cap in (uploads or {}).items()
        ]

    def _cap(self, scope: Scope) -> int:
        for method, pattern, cap in self.uploads:
            if scope.get("method") == method and pattern.fullmatch(scope.get("path", "")):
                return cap
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self._cap(scope)
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            # A client that asked "Expect: 100-continue" sends nothing until told to: answer
            # at once. Any other is sending the body now.
            if b"100-continue" not in headers.get(b"expect", b"").lower():
                await self._drain(receive, True, max_bytes)
            await self._refuse(scope, receive, send, max_bytes)
            return
        received = 0
        started = False
        body_done = False
        deadline = anyio.current_time() + self.read_timeout_s

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # afterwards the app only waits for a disconnect
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                message = await receive()
                if message["type"] == "http.request":
                    body_done = not message.get("more_body", False)
                    received += len(message.get("body", b""))
                    if received > max_bytes:
                        await self._drain(receive, message.get("more_body", False), max_bytes)
                        raise BodyTooLarge(max_bytes)
                return message
            raise BodyTimedOut(self.read_timeout_s)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send, max_bytes)
        except BodyTimedOut as exc:
            if not started:
                response = problem(408, exc.code, exc.detail, exc.headers)
                await response(scope, receive, send)

    async def _drain(self, receive: Receive, more_body: bool, max_bytes: int) -> None:
        """Read and drop what the client is still sending, within bounds.

        A server that answers and closes with bytes unread makes the client's kernel reset the
        connection, and most clients then report the reset rather than the 413. Up to
        ``drain_factor`` times the cap, for at most ``drain_seconds``, is read first.
        """
        drained = 0
        with anyio.move_on_after(self.drain_seconds):
            while more_body and drained <= max_bytes * self.drain_factor:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                more_body = message.get("more_body", False)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        # The same problem+json as when the app itself sees the cap exceeded.
        response = problem(
            413, BodyTooLarge.code, BodyTooLarge(max_bytes).detail, {"Connection": "close"}
        )
        await response(scope, receive, send)
