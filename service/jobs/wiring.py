"""The job manager for the settings: Celery and Redis when ``CNNVIZ_REDIS_URL`` is set,
else the in-process executor with records in SQLite under ``CNNVIZ_DATA_DIR`` (in memory
with ``CNNVIZ_DATA_DIR=:memory:``)."""

from __future__ import annotations

import logging

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from cnnviz.threads import CoreShare
from service.concurrency import TorchPool
from service.jobs.callbacks import CallbackHosts
from service.jobs.manager import JobManager
from service.jobs.sweeper import LeaseSweeper
from service.settings import Settings
from workers.callbacks import CallbackPolicy
from workers.kinds import Resources
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
    resources = Resources(
        models=registry,
        datasets=datasets,
        shard_images=settings.exemplar_shard_images,
        loader_workers=settings.exemplar_loader_workers,
        batch_size=settings.exemplar_batch_size,
        cores=cores,
        # In-process jobs run on threads of lower priority (below): they yield the cores to
        # the synchronous requests rather than take a fair share from them.
        background=not settings.redis_url and settings.inprocess_job_nice > 0,
        max_job_work=settings.max_job_work,
    )
    if settings.redis_url:
        from service.jobs.celery_client import CeleryTransport
        from workers.records.redis import RedisRecords

        # Short timeouts, no retries: while Redis is down a request gets a clear 503 at once.
        records = RedisRecords(
            settings.redis_url,
            ttl_seconds=settings.job_ttl_seconds,
            connect_timeout_s=2.0,
            timeout_s=5.0,
            results_max_bytes=settings.redis_results_max_bytes,
        )
        transport = CeleryTransport(
            settings.redis_url, check_interval_s=settings.queue_check_interval
        )
        manager = JobManager(
            records,
            transport,
            resources,
            pool,
            settings.job_ttl_seconds,
            settings.max_active_jobs_per_owner,
        )
        _configure(manager, settings)
        limits = Limits(callback=callback_policy(settings))
        manager.sweeper = LeaseSweeper(
            records,
            transport.send_again,
            transport.send_shard,
            ttl_seconds=settings.job_ttl_seconds,
            interval_s=settings.lease_sweep_interval,
            limits=limits,
        )
        manager.on_ended = lambda task: ended(task, records, limits)
        return manager
    from service.jobs.inprocess import InProcessTransport

    memory = inprocess_records(settings)
    executor = InProcessTransport(
        memory,
        resources,
        workers=settings.inprocess_job_workers,
        backlog=settings.inprocess_job_backlog,
        soft_time_limit_s=settings.job_soft_time_limit,
        progress_interval_s=settings.job_progress_interval,
        preview_interval_s=settings.job_preview_interval,
        callback=callback_policy(settings),
        nice=settings.inprocess_job_nice,
        checkpoint_steps=settings.job_checkpoint_steps,
        checkpoint_interval_s=settings.job_checkpoint_interval,
        sweep_interval_s=settings.lease_sweep_interval,
        job_ttl_seconds=settings.job_ttl_seconds,
    )
    manager = JobManager(
        memory,
        executor,
        resources,
        pool,
        settings.job_ttl_seconds,
        settings.max_active_jobs_per_owner,
    )
    _configure(manager, settings)
    return manager


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


def _configure(manager: JobManager, settings: Settings) -> None:
    manager.inline_max_bytes = settings.inline_result_max_bytes
    manager.callbacks = CallbackHosts(settings.callback_host_set)


def callback_policy(settings: Settings) -> CallbackPolicy | None:
    """How in-process jobs deliver callbacks (Celery workers have settings of their own)."""
    if not settings.callback_secret:
        return None
    return CallbackPolicy(
        settings.callback_secret,
        attempts=settings.callback_attempts,
        backoff_s=settings.callback_backoff,
    )
