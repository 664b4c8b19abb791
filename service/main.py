"""The FastAPI app: ``uvicorn service.main:app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from cnnviz.allocator import keep_freed_memory
from cnnviz.threads import CoreShare
from service.batching import MicroBatcher
from service.compression import SelectiveGZip
from service.concurrency import TorchPool
from service.cors import install_cors
from service.docs import install_docs
from service.errors import install_error_handlers
from service.jobs import build_jobs
from service.jobs.metrics import JobCollector
from service.limits import BodyLimits
from service.observability import configure_logging, install_observability
from service.openapi import contract
from service.raw import RAW_MEDIA_TYPES
from service.readiness import ModelReadiness
from service.routers import api_router, health, viewer
from service.routers.viewer import STATIC_DIR, VIEWER_ASSETS
from service.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the built-in model before listening, start the jobs' sweeper; close at the end."""
    await app.state.models_ready.load()
    await app.state.jobs.start()
    yield
    await app.state.jobs.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = FastAPI(
        title="cnnviz",
        version="0.1.0",
        description="What convolutional networks see: feature-map grids and optimized patterns.",
        lifespan=lifespan,
        # Served by install_docs from local files: FastAPI's own pages load a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    if settings.keep_freed_memory:  # before threads allocate: see cnnviz.allocator
        keep_freed_memory()
    app.state.registry = settings.model_registry(settings.device)
    # One share of the cores for every torch call of the process: requests and jobs.
    cores = CoreShare(settings.torch_threads)
    batcher = MicroBatcher(
        cores, settings.sync_batch_max, max_delay_s=settings.sync_batch_delay_ms / 1000
    )
    app.state.pool = TorchPool(settings.sync_concurrency, settings.sync_backlog, cores, batcher)
    app.state.datasets = settings.dataset_registry()
    app.state.jobs = build_jobs(settings, app.state.registry, app.state.datasets, cores)
    app.state.models_ready = ModelReadiness(app.state.registry)
    install_error_handlers(app)
    install_docs(app)
    app.mount(VIEWER_ASSETS, StaticFiles(directory=STATIC_DIR / "viewer"), name="viewer-assets")
    app.openapi = contract(app, keys=bool(settings.api_key_list))  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(api_router)
    app.include_router(viewer.router)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout,
        uploads={("PUT", r"/v1/models/[^/]+"): settings.model_upload_max_bytes},
    )
    # JSON (a job's) shrinks; PNGs and event streams not, raw arrays are sent as they are
    # (floats gain little, and their ETags stay exact), and neither are feature-map and
    # attribution answers, mostly base64 PNG (see service.compression). Level 1: a job's JSON
    # may carry base64 PNGs too, which level 6 barely shrinks more but compresses several
    # times slower.
    app.add_middleware(
        SelectiveGZip,
        minimum_size=1024,
        compresslevel=1,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, *RAW_MEDIA_TYPES),
    )
    install_cors(app, settings.cors_origin_list)
    # Outermost: every answer, a refused body's 413 included, is counted and has a request id.
    registry = install_observability(app, app.state.pool)
    registry.register(JobCollector(app.state.jobs))
    log = logging.getLogger(__name__)
    for warning in app.state.registry.warnings:
        log.warning("%s", warning)
    for name, error in app.state.registry.errors.items():
        log.warning("model %r is unavailable: %s", name, error)
    return app


app = create_app()
