"""What a platform sees of the service: Prometheus metrics, request ids, and logs.

- ``GET /metrics``: requests by route, method and status with their latency
  (:class:`RequestMetrics`), the torch pool's occupancy and the requests it refused, and the
  job metrics that :mod:`service.jobs` collects at scrape time.
- ``X-Request-ID``: taken from the request when it is a sane token, made up otherwise, sent
  back on the response, and written in every log line of the request (asgi-correlation-id).
- Logs: plain text, or one JSON object a line with ``CNNVIZ_LOG_FORMAT=json``
  (python-json-logger).
"""

from __future__ import annotations

import gzip
import logging
import re
import time
import uuid
from typing import Literal

from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware
from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.concurrency import TorchPool
from workers.logs import JobIdFilter, job_logging

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

# CorrelationIdFilter puts the request id in ``correlation_id``; JSON names it request_id.
# JobIdFilter adds the job id (``job_tag``: " job=<id>", or nothing outside a job).
_PLAIN = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]%(job_tag)s %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(correlation_id)s %(job_id)s %(message)s"
_JOB_PATH = re.compile(r"/v1/jobs/([^/]+)")
_HANDLER_MARK = "_cnnviz_handler"


def _valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def configure_logging(log_format: Literal["plain", "json"], level: str) -> None:
    """One handler on the root logger, carrying the request id; uvicorn's loggers go through it.

    Idempotent: building several apps in one process (tests) replaces the handler, never adds
    a second one.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    handler.addFilter(_ApiJobIdFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                _JSON_FIELDS,
                rename_fields={
                    "levelname": "level",
                    "name": "logger",
                    "correlation_id": "request_id",
                },
                reserved_attrs=[*RESERVED_ATTRS, "job_tag"],
            )
        )
        # uvicorn's own handlers write plain text: send its lines through this one instead.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    else:
        handler.setFormatter(logging.Formatter(_PLAIN))
    root.addHandler(handler)
    root.setLevel(level.upper())


class PoolMetrics:
    """The synchronous path's torch pool, as gauges read at scrape time, and its refusals."""

    def __init__(self, registry: CollectorRegistry, pool: TorchPool) -> None:
        in_use = Gauge(
            "cnnviz_torch_pool_in_use",
            "torch calls of the synchronous path running or waiting for a slot",
            registry=registry,
        )
        in_use.set_function(lambda: pool.admitted)
        capacity = Gauge(
            "cnnviz_torch_pool_capacity",
            "torch calls that may run or wait at once; past it, 503 busy",
            registry=registry,
        )
        capacity.set_function(lambda: pool.capacity)
        self.busy = Counter(
            "cnnviz_busy_rejections",
            "requests answered 503 busy (the torch pool or the in-process job queue was full)",
            ["handler"],
            registry=registry,
        )


class RequestMetrics:
    """``http_requests_total{handler,method,status}`` and the latency histogram
    ``http_request_duration_seconds{handler,method}``, by the route's path template.

    Pure ASGI and cheap: the template is read after the response from the route Starlette's
    router records in the scope (``scope["route"]``), so no request is matched twice and no
    Request object is built; a path no route matched counts as ``none``. (A general-purpose
    instrumentation middleware matched every path against every route before the handler,
    about 0.5 ms of event-loop time per request, which bounded throughput on small models.)
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, skip: set[str]) -> None:
        self.app = app
        self._skip = skip
        self._requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status",
            ["handler", "method", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "http_request_duration_seconds",
            "seconds from the request's arrival to the end of its response, by route template",
            ["handler", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self._skip:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is a 500 to the client

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            handler = route_template(scope)
            method = scope.get("method", "")
            self._requests.labels(handler, method, str(status)).inc()
            self._latency.labels(handler, method).observe(time.perf_counter() - started)


def install_observability(app: FastAPI, pool: TorchPool) -> CollectorRegistry:
    """Add ``/metrics`` and the request-id middleware to ``app``; its metrics registry.

    Each app has its own registry, so that several apps in one process (tests) do not clash.
    """
    registry = CollectorRegistry()

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        body = generate_latest(registry)
        headers = {}
        if "gzip" in request.headers.get("accept-encoding", ""):
            body, headers = gzip.compress(body, compresslevel=1), {"Content-Encoding": "gzip"}
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers=headers)

    app.state.metrics_registry = registry
    app.state.pool_metrics = PoolMetrics(registry, pool)
    app.add_middleware(RequestMetrics, registry=registry, skip={"/metrics"})
    app.add_middleware(JobLogging)
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=REQUEST_ID_HEADER,
        generator=lambda: uuid.uuid4().hex,
        validator=_valid_request_id,
        transformer=lambda value: value,
    )
    return registry


class _ApiJobIdFilter(JobIdFilter):
    """Also tags uvicorn's access line of a request about a job (written after the request's
    own context has ended) with the job in its path."""

    def job_of(self, record: logging.LogRecord) -> str | None:
        if record.name != "uvicorn.access" or not isinstance(record.args, tuple):
            return None
        path = record.args[2] if len(record.args) > 2 else None
        match = _JOB_PATH.match(path) if isinstance(path, str) else None
        return match.group(1) if match else None


class JobLogging:
    """Tags the log lines of a request about a job (``/v1/jobs/{id}...``) with its id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with job_logging(match.group(1)):
            await self.app(scope, receive, send)


def count_busy(request: Request) -> None:
    """Count a 503 busy answer under its route template."""
    metrics: PoolMetrics | None = getattr(request.app.state, "pool_metrics", None)
    if metrics is None:
        return
    metrics.busy.labels(handler=route_template(request.scope)).inc()


def route_template(scope: Scope) -> str:
    """The whole path template of the route the router matched (``none`` when none did).

    The route in the scope knows its template relative to the router it was included with
    (``/models/{model}/layers`` under ``/v1``); the prefix is what the request's path has
    before the part the route matched, the same for every request of that route: found at
    its first request and kept on the route.
    """
    route = scope.get("route")
    relative = getattr(route, "path", None)
    if not isinstance(relative, str):
        return "none"
    known = getattr(route, _TEMPLATE, None)
    if isinstance(known, str):
        return known
    matched = relative
    for name, value in scope.get("path_params", {}).items():
        pattern = r"\{" + re.escape(name) + r"(:[^}]*)?\}"
        text = str(value)
        matched = re.sub(pattern, lambda _: text, matched)  # noqa: B023 (used at once)
    path = scope.get("path", "")
    if not path.endswith(matched):  # a converted value that reads otherwise: keep it relative
        return relative
    template = path[: len(path) - len(matched)] + relative
    setattr(route, _TEMPLATE, template)
    return template


_TEMPLATE = "_cnnviz_path_template"
