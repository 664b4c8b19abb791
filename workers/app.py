"""The Celery app of the GPU workers.

Start a worker (one per machine, one pool child per GPU)::

    CNNVIZ_REDIS_URL=redis://redis:6379/0 \\
    celery -A workers.app worker -Q gpu --pool prefork --concurrency 1 --loglevel INFO

Nothing here touches CUDA or loads a model: the parent forks its pool children first, and
each child picks its device and loads models at its first job (:mod:`workers.tasks`).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    worker_process_init,
)
from celery.worker.consumer import Consumer

from cnnviz.allocator import keep_freed_memory, release_freed_memory
from cnnviz.threads import CoreShare, SharedCounter
from schemas.jobs import JOB_QUEUE, JOB_TASK, SHARD_TASK
from workers.config import get_worker_settings
from workers.device import child_index
from workers.heartbeat import BudgetHeartbeat
from workers.logs import JobIdFilter

settings = get_worker_settings()
if settings.keep_freed_memory:  # in the parent, so every pool child inherits it
    keep_freed_memory()

# After losing the broker, kombu retries the connection 2 s later, then 4, 6, ... up to every
# 30 s: a worker would come back up to 30 s after Redis did, and /readyz (which asks the
# workers) would stay 503 that long while jobs are accepted again. Retried every second
# instead: a retry is one TCP connect.
RECONNECT_INTERVAL_S = 1.0


class QuickReconnectConsumer(Consumer):
    """Celery's consumer, retrying a lost broker connection every second."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_INTERVAL_S,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL_S,
        )
        return super().ensure_connected(conn)


app = Celery(
    "cnnviz",
    broker=settings.redis_url,
    backend=settings.redis_url,
    include=["workers.tasks"],
)
app.conf.update(
    # JSON only: messages hold ids and small settings, never tensors or pickles; a worker that
    # accepted pickle would run whatever code a message carried.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Every job goes to the gpu queue, whoever sends it; workers consume it with -Q gpu.
    task_default_queue=JOB_QUEUE,
    task_routes={name: {"queue": JOB_QUEUE} for name in (JOB_TASK, SHARD_TASK)},
    task_create_missing_queues=True,
    # Acknowledge a job when it ends, not when it starts: if the worker dies mid-job, the
    # message is still in Redis and another worker runs the job.
    task_acks_late=True,
    # ... and when a pool child is killed (OOM killer, SIGKILL), requeue its job at once
    # rather than record a failure. A job that kills every child it touches would loop: the
    # job record counts deliveries and fails it after CNNVIZ_JOB_MAX_ATTEMPTS.
    task_reject_on_worker_lost=True,
    # A job that failed or hit its hard limit would fail the same way again: acknowledge it.
    task_acks_on_failure_or_timeout=True,
    # Reserve one job at a time: a long GPU job must not hold others hostage in its worker's
    # prefetch buffer while another worker sits idle.
    worker_prefetch_multiplier=1,
    # The soft limit raises SoftTimeLimitExceeded in the job, which records a timeout error;
    # the hard limit kills a child stuck in C code. Both below the visibility timeout, or a
    # job still running would be handed to a second worker.
    task_soft_time_limit=settings.job_soft_time_limit,
    task_time_limit=settings.job_time_limit,
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout,
        # How soon the jobs of a lost worker go back to the queue once past the visibility
        # timeout: sweep every interval (kombu's default throttle would make it 10x longer).
        "unacked_restore_interval": settings.broker_restore_interval,
        "unacked_restore_throttle": 1,
    },
    result_backend_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout,
    },
    # The task's own result is a small summary; the job's images live in the job record
    # (its own TTL), so Celery's copy may go sooner.
    result_expires=settings.result_expires,
    # One child per GPU (the CLI's --concurrency overrides); prefork isolates CUDA per child.
    worker_pool="prefork",
    worker_concurrency=1,
    # Replace a child after this many jobs: allocator caches and fragmentation grow.
    worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
    # On a cold shutdown (SIGQUIT; SIGTERM too with REMAP_SIGTERM=SIGQUIT), let the running
    # job go on for a while, then stop it and put its message back in the queue at once,
    # rather than leave it to the visibility timeout.
    worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
    broker_connection_retry_on_startup=True,
    worker_consumer="workers.app:QuickReconnectConsumer",
    # The job id in every line about a job (JobIdFilter, on the handlers below).
    worker_log_format="[%(asctime)s: %(levelname)s/%(processName)s]%(job_tag)s %(message)s",
    worker_task_log_format="[%(asctime)s: %(levelname)s/%(processName)s]%(job_tag)s "
    "[%(task_name)s(%(task_id)s)] %(message)s",
)


# Each worker publishes its device and memory budget, which the API admits jobs against.
app.steps["worker"].add(BudgetHeartbeat)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _tag_job_lines(logger: Any, **_: Any) -> None:
    for handler in logger.handlers:
        handler.addFilter(JobIdFilter())


# The cores of the machine (or CNNVIZ_WORKER_TORCH_THREADS of them), shared by the pool
# children running a job: one alone uses them all, N at once get a fair share each, so the
# children's OpenMP teams never oversubscribe the cores. Made here, in the parent, before the
# pool forks: the count lives in shared memory that every child inherits.
CORES = CoreShare(settings.worker_torch_threads, SharedCounter(child_index))


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    """In each pool child, after the fork (models load at the first job): a child that
    replaces a killed one must not inherit its count of running jobs; and leave to start
    DataLoader processes.

    A prefork pool child is a daemonic process, and multiprocessing refuses to let a daemonic
    process start children ("daemonic processes are not allowed to have children":
    celery#1709, billiard#280, pytorch#15950): an exemplars job's DataLoader workers, which
    decode images ahead of the model, would fail to start. The flag only guards against
    orphans; torch's loader workers watch their parent and exit when it dies, and they end
    with each shard, so the child clears it. tests/jobs/test_exemplars_api.py runs the real
    worker command with loader processes.
    """
    import multiprocessing

    multiprocessing.current_process().daemon = False
    counter = CORES.counter
    if isinstance(counter, SharedCounter):
        counter.reset()
    if settings.compile_warmup_pairs():  # CNNVIZ_COMPILE_WARMUP: compile now, not at a job
        from workers.tasks import child_resources

        child_resources()


@task_postrun.connect
def _release_memory(**_: Any) -> None:
    """After each task (a job, a shard, a merge), the pool child gives back the memory it
    freed: an idle worker does not hold its last job's peak (see cnnviz.allocator)."""
    release_freed_memory()
