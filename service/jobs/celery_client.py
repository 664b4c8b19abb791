"""The Celery transport: the API sends jobs to the ``gpu`` queue by task name.

The API never imports the workers' Celery app (that would pull the worker's settings, tasks
and torch code into the API). It has a light client of its own, configured here, that shares
only what :mod:`schemas.jobs` names: the task name and the queue. The message is JSON: the
job's id and its resolved request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis import RedisError
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.jobs import JOB_QUEUE, JOB_TASK, SHARD_TASK, Admission, JobTask
from service.jobs.transport import QueueUnavailable
from workers.budgets import largest, live

# What a call through kombu raises when Redis is away: kombu's own error, a socket's, or (a
# pooled connection that Redis closed when it restarted) redis-py's.
_BROKER_ERRORS = (OperationalError, OSError, RedisError)


def redact(url: str) -> str:
    """A Redis URL without its password, for messages and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def make_client(redis_url: str) -> Celery:
    """A Celery app that only sends tasks and asks workers what they consume."""
    client = Celery("cnnviz-api", broker=redis_url, backend=redis_url, set_as_current=False)
    client.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        # A request must not hang while Redis is down: connect fast, retry a publish once,
        # and answer 503; the connection pool reconnects on the next request by itself.
        broker_connection_timeout=2.0,
        broker_transport_options={"socket_connect_timeout": 2.0, "socket_timeout": 5.0},
        redis_socket_connect_timeout=2.0,
        redis_socket_timeout=5.0,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    return client


class CeleryTransport:
    """A :class:`~service.jobs.transport.JobTransport` on Celery and Redis."""

    name = "celery"

    def __init__(
        self,
        redis_url: str,
        check_interval_s: float = 5.0,
        inspect_timeout_s: float = 1.0,
        fallback_budget_mb: int = 1024,
    ) -> None:
        """``fallback_budget_mb``: what a job is admitted against while no live worker of its
        queue has published its budget (``CNNVIZ_WORKER_MEMORY_BUDGET_MB``)."""
        self._url = redact(redis_url)
        self._client = make_client(redis_url)
        self._redis = redis.Redis.from_url(  # as the records': a clear 503 at once
            redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 1)
        )
        self._fallback_mb = fallback_budget_mb
        self._check_interval_s = check_interval_s
        self._inspect_timeout_s = inspect_timeout_s
        self._checked_at = -float("inf")
        self._checks: dict[str, dict[str, Any]] = {}
        self._check_lock = anyio.Lock()
        self._metrics_lock = threading.Lock()
        self._seen = 0
        self._seen_at = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None

    async def submit(self, task: JobTask) -> None:
        await anyio.to_thread.run_sync(self._send, task)

    def _send(self, task: JobTask, task_id: str | None = None) -> None:
        self._send_task(JOB_TASK, [task.model_dump(mode="json")], task_id or task.job_id)

    def send_again(self, task: JobTask, task_id: str) -> None:
        """Send a job whose worker was lost again, as a task of its own id (blocking)."""
        self._send(task, task_id)

    def send_shard(
        self, task: JobTask, attempt: int, shard: int, shards: int, task_id: str
    ) -> None:
        """Send one shard of a job again (blocking)."""
        self._send_task(SHARD_TASK, [task.model_dump(mode="json"), attempt, shard, shards], task_id)

    def _send_task(self, name: str, args: list[Any], task_id: str) -> None:
        try:
            self._client.send_task(name, args=args, task_id=task_id, queue=JOB_QUEUE)
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(f"cannot send the job to Redis at {self._url}: {exc}") from exc

    def admission(self) -> Admission:
        """The largest budget of the live workers of the queue, else the fallback."""
        try:
            budget = largest(live(self._redis, JOB_QUEUE))
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(
                f"cannot read the workers' budgets at {self._url}: {exc}"
            ) from exc
        if budget is None:
            return Admission(memory_budget_mb=self._fallback_mb, source="fallback")
        return Admission(
            memory_budget_mb=budget.memory_budget_mb,
            source="worker",
            worker=budget.worker,
            device=budget.device,
        )

    def _consumers(self) -> int:
        """Workers that consume the ``gpu`` queue (one reply per worker, after the timeout)."""
        inspector = self._client.control.inspect(timeout=self._inspect_timeout_s)
        replies = inspector.active_queues() or {}
        return sum(
            1 for queues in replies.values() if any(q.get("name") == JOB_QUEUE for q in queues)
        )

    async def start(self) -> None:
        return None  # the lease sweeper (service.jobs.sweeper) is the API's part here

    def _max_age(self) -> float:
        """How long an answer is reused: a failing one at most a second, so that /readyz
        sees a recovery (Redis back, a worker reconnected) within about a second of it, not
        at the next background refresh."""
        healthy = all(check.get("ok", False) for check in self._checks.values())
        return self._check_interval_s if healthy else min(1.0, self._check_interval_s)

    async def readiness(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        # Asking the workers takes up to the inspect timeout. The first call waits for the
        # answer, and so does a call while the last answer failed (or with ``fresh``: the
        # queue was unreachable since, so that answer says nothing now); otherwise the
        # latest answer comes at once and, when it is older than the check interval, one
        # refresh starts in the background.
        if fresh:
            self._checked_at = -float("inf")
        stale = time.monotonic() - self._checked_at >= self._max_age()
        if not self._checks or fresh or (stale and self._max_age() < self._check_interval_s):
            await self._refresh()
        elif stale and not self._check_lock.locked():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._checks

    async def _refresh(self) -> None:
        async with self._check_lock:
            if self._checks and time.monotonic() - self._checked_at < self._max_age():
                return
            try:
                consumers = await anyio.to_thread.run_sync(self._consumers)
            except _BROKER_ERRORS as exc:
                self._checks = {
                    "workers": {
                        "ok": False,
                        "queue": JOB_QUEUE,
                        "reason": f"cannot ask the workers through Redis at {self._url}: {exc}",
                    }
                }
            else:
                workers: dict[str, Any] = {"ok": consumers > 0, "queue": JOB_QUEUE}
                workers["consumers"] = consumers
                if consumers == 0:
                    workers["reason"] = (
                        f"no worker consumes the {JOB_QUEUE!r} queue, so jobs would "
                        "wait; start one: celery -A workers.app worker -Q gpu"
                    )
                self._checks = {"workers": workers}
            self._checked_at = time.monotonic()

    def queue_depth(self) -> int:
        # kombu's Redis transport keeps a queue as lists: the name for priority 0, and the
        # name, a separator and the step for the other priority steps.
        names = [JOB_QUEUE] + [f"{JOB_QUEUE}\x06\x16{step}" for step in (3, 6, 9)]
        try:
            with self._client.connection_for_read() as connection:
                client = connection.default_channel.client
                return int(sum(client.llen(name) for name in names))
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(str(exc)) from exc

    def workers_seen(self) -> int:
        """Workers consuming the queue, asked at most every check interval."""
        with self._metrics_lock:
            if time.monotonic() - self._seen_at >= self._check_interval_s:
                try:
                    self._seen = self._consumers()
                except _BROKER_ERRORS as exc:
                    raise QueueUnavailable(str(exc)) from exc
                self._seen_at = time.monotonic()
            return self._seen

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._client.close)
        await anyio.to_thread.run_sync(self._redis.close)
