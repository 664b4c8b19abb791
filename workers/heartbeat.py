"""The heartbeat of a Celery worker's budget: a bootstep of the worker's main process.

At start it works out the worker's device and memory budget once (in a process of its own:
see :func:`workers.device.children_budget`), then publishes it for each queue the worker
consumes every ``CNNVIZ_WORKER_HEARTBEAT_INTERVAL`` seconds, from a thread: a Redis call in
Celery's event loop would stall the consumer while Redis is slow. One heartbeat per worker,
not per pool child: the budget is the worker's. A worker that stops withdraws its budget; a
worker that dies leaves it to expire (:mod:`workers.budgets`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from schemas.jobs import JOB_QUEUE, WorkerBudget
from workers.budgets import TTL_BEATS, publish, withdraw
from workers.config import get_worker_settings
from workers.device import children_budget

log = logging.getLogger(__name__)


class BudgetHeartbeat(bootsteps.StartStopStep):
    """Publishes the worker's budget while it runs (``app.steps["worker"].add(...)``)."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._budgets: list[WorkerBudget] = []
        self._client: redis.Redis | None = None

    def start(self, worker: Any) -> None:
        settings = get_worker_settings()
        queues = sorted(worker.app.amqp.queues.consume_from or {}) or [JOB_QUEUE]
        self._client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        args = (worker.hostname, queues, int(worker.concurrency or 1), settings)
        self._thread = threading.Thread(target=self._run, args=args, name="budget", daemon=True)
        self._thread.start()

    def _run(self, name: str, queues: list[str], children: int, settings: Any) -> None:
        try:
            device, budget_mb = children_budget(settings.worker_device, children)
        except Exception:
            log.exception("cannot work out this worker's memory budget; none is published")
            return
        self._budgets = [
            WorkerBudget(worker=name, queue=q, device=device, memory_budget_mb=budget_mb)
            for q in queues
        ]
        log.info("publishing a memory budget of %d MiB on %s for %s", budget_mb, device, queues)
        interval = settings.worker_heartbeat_interval
        while not self._stop.is_set():
            try:
                for budget in self._budgets:
                    assert self._client is not None
                    publish(self._client, budget, interval * TTL_BEATS)
            except redis.RedisError as exc:
                log.warning("cannot publish this worker's budget: %s", exc)
            self._stop.wait(interval)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._client is None:
            return
        try:
            for budget in self._budgets:
                withdraw(self._client, budget)
        except redis.RedisError as exc:
            log.warning("cannot withdraw this worker's budget (it expires): %s", exc)
        self._client.close()

    def terminate(self, worker: Any) -> None:  # a cold shutdown stops it the same way
        self.stop(worker)
