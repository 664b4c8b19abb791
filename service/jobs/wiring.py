"""The job manager for the settings: Celery and Redis when ``CNNVIZ_REDIS_URL`` is set,
else the in-process executor with records in SQLite under ``CNNVIZ_DATA_DIR`` (in memory
with ``CNNVIZ_DATA_DIR=:memory:``)."""

from __future__ import annotations

import logging
from dataclasses import replace

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from cnnviz.threads import CoreShare
from service.concurrency import TorchPool
from service.jobs.callbacks import CallbackHosts, CallbackPolicy
from service.jobs.courier import CallbackCourier
from service.jobs.manager import JobManager
from service.jobs.sweeper import LeaseSweeper
from service.settings import Settings
from workers.kinds import Resources
from workers.kinds.base import Blobs
from workers.kinds.optimization import warm_up
from workers.records import JobRecords
from workers.records.memory import MemoryRecords
from workers.records.sqlite import SqliteRecords
from workers.run import Limits, ended

log = logging.getLogger(__name__)


def build_jobs(
    settings: Settings,
    registry: ModelRegistry,
    datasets: DatasetRegistry,
    cores: CoreShare | None = None,
) -> JobManager:
    """The manager, its store and its transport; nothing connects until first used.

    ``cores``: the process's share of the cores, which in-process jobs take part in.
    """
    # Checking a job before queueing it takes milliseconds once the model is loaded; it gets
    # a thread of its own with a deep backlog, so a burst of submissions is not refused by
    # the synchronous path's bound, nor slows feature maps down.
    pool = TorchPool(concurrency=1, backlog=256, cores=cores)
    # The API runs what it starts itself (no lease); it enforces the soft limit between steps.
    limits = Limits.from_settings(settings)
    inline, callbacks = settings.inline_result_max_bytes, CallbackHosts(settings.callback_host_set)
    if settings.redis_url:
        from service.jobs.celery_client import CeleryTransport
        from workers.records.redis import RedisRecords

        # Short timeouts and no health check: while Redis is down or stalled, a request gets a
        # clear 503 within one timeout and its one retry (10 s), never a ping's wait before
        # them (which made 15-20 s when Redis was stopped with its connections open).
        records = RedisRecords(
            settings.redis_url,
            ttl_seconds=settings.job_ttl_seconds,
            connect_timeout_s=2.0,
            timeout_s=5.0,
            results_max_bytes=settings.redis_results_max_bytes,
            health_check_interval_s=0,
        )
        resources = _resources(settings, registry, datasets, cores, records)
        transport = CeleryTransport(
            settings.redis_url,
            check_interval_s=settings.queue_check_interval,
            fallback_budget_mb=settings.worker_memory_budget_mb,
        )
        sweeper = LeaseSweeper(
            records,
            transport.send_again,
            transport.send_shard,
            ttl_seconds=settings.job_ttl_seconds,
            interval_s=settings.lease_sweep_interval,
            limits=limits,
        )
        return JobManager(
            records,
            transport,
            resources,
            pool,
            settings.job_ttl_seconds,
            settings.max_active_jobs_per_owner,
            sweeper=sweeper,
            courier=courier(settings, records),
            on_ended=lambda task: ended(task, records, limits),
            inline_max_bytes=inline,
            callbacks=callbacks,
        )
    from service.jobs.inprocess import InProcessTransport

    memory = inprocess_records(settings)
    resources = _resources(settings, registry, datasets, cores, memory)
    # The API runs the jobs: it warms its own compile cache (with Redis the workers do).
    warm_up(resources, settings.compile_warmup_pairs())
    executor = InProcessTransport(
        memory,
        resources,
        workers=settings.inprocess_job_workers,
        backlog=settings.inprocess_job_backlog,
        # Checkpoints as on the workers, where the records outlive the process (SQLite); in
        # memory a checkpoint would have no reader.
        limits=limits if isinstance(memory, SqliteRecords) else replace(limits, checkpoint_steps=0),
        nice=settings.inprocess_job_nice,
        sweep_interval_s=settings.lease_sweep_interval,
        job_ttl_seconds=settings.job_ttl_seconds,
    )
    return JobManager(
        memory,
        executor,
        resources,
        pool,
        settings.job_ttl_seconds,
        settings.max_active_jobs_per_owner,
        inline_max_bytes=inline,
        callbacks=callbacks,
        courier=courier(settings, memory),
    )


def _resources(
    settings: Settings,
    registry: ModelRegistry,
    datasets: DatasetRegistry,
    cores: CoreShare | None,
    records: Blobs,
) -> Resources:
    """What the API's jobs use: they are checked here, and in-process jobs run here too."""
    return Resources.from_settings(
        settings,
        registry,
        datasets,
        cores,
        # In-process jobs run on threads of lower priority (below): they yield the cores to
        # the synchronous requests rather than take a fair share from them.
        background=not settings.redis_url and settings.inprocess_job_nice > 0,
        max_job_work=settings.max_job_work,
        # A caricature's image is kept in the records for the job's life, not in its task.
        blobs=records,
        blob_ttl_seconds=settings.job_ttl_seconds,
        max_image_pixels=settings.max_image_pixels,
    )


def courier(settings: Settings, records: JobRecords) -> CallbackCourier:
    """The courier of ``records``' callbacks, signed with the settings' secret."""
    policy = None
    if settings.callback_secret:
        policy = CallbackPolicy(
            settings.callback_secret,
            attempts=settings.callback_attempts,
            backoff_s=settings.callback_backoff,
        )
    return CallbackCourier(records, policy, interval_s=settings.callback_poll_interval)


def inprocess_records(settings: Settings) -> MemoryRecords | SqliteRecords:
    """The in-process jobs' records: in SQLite under the data directory (created here), or
    in memory with ``CNNVIZ_DATA_DIR=:memory:``."""
    if settings.inprocess_results_dir is not None:
        log.warning(
            "CNNVIZ_INPROCESS_RESULTS_DIR is deprecated: large results go to "
            "CNNVIZ_DATA_DIR/results; unset it to use that folder"
        )
    data_dir = settings.data_path
    if data_dir is None:
        return MemoryRecords(
            settings.job_ttl_seconds,
            max_result_bytes=settings.inprocess_results_max_bytes,
            overflow=settings.inprocess_results_overflow,
            results_dir=settings.inprocess_results_dir,
            max_disk_bytes=settings.inprocess_results_disk_max_bytes,
        )
    records = SqliteRecords(
        data_dir,
        settings.job_ttl_seconds,
        max_result_bytes=settings.inprocess_results_disk_max_bytes,
        blobs_dir=settings.inprocess_results_dir,
    )
    log.info("in-process job records in %s", records.directory)
    return records
