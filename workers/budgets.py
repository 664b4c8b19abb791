"""Workers' memory budgets in Redis: what each live worker of a queue can run.

A Celery worker's main process publishes its device and memory budget under a key of its own
with a TTL, and refreshes it every ``CNNVIZ_WORKER_HEARTBEAT_INTERVAL`` seconds
(:mod:`workers.heartbeat`); a worker that stops withdraws it, and a worker that dies leaves it
to expire (:data:`TTL_BEATS` beats). The API admits a job against the largest budget of the
live workers of its queue (:func:`largest`): any of them may take it.

A set per queue names the workers that published, so that reading them is two calls, never a
scan of the keyspace; a name whose key has expired is dropped from it when read.
"""

from __future__ import annotations

import redis

from schemas.jobs import WorkerBudget

__all__ = ["TTL_BEATS", "budget_key", "largest", "live", "publish", "withdraw"]

TTL_BEATS = 3
"""A budget lives this many heartbeats: a worker that misses two (a slow Redis) stays live."""


def budget_key(queue: str, worker: str) -> str:
    return f"cnnviz:budget:{queue}:{worker}"


def _names_key(queue: str) -> str:
    return f"cnnviz:budgets:{queue}"


def publish(client: redis.Redis, budget: WorkerBudget, ttl_s: float) -> None:
    """Publish (or refresh) ``budget`` for ``ttl_s`` seconds."""
    with client.pipeline() as pipe:
        pipe.set(
            budget_key(budget.queue, budget.worker), budget.model_dump_json(), px=int(ttl_s * 1000)
        )
        pipe.sadd(_names_key(budget.queue), budget.worker)
        pipe.execute()


def withdraw(client: redis.Redis, budget: WorkerBudget) -> None:
    """Remove ``budget`` (its worker stops)."""
    with client.pipeline() as pipe:
        pipe.delete(budget_key(budget.queue, budget.worker))
        pipe.srem(_names_key(budget.queue), budget.worker)
        pipe.execute()


def live(client: redis.Redis, queue: str) -> list[WorkerBudget]:
    """The budgets of the live workers of ``queue``."""
    names = sorted(
        n.decode() if isinstance(n, bytes) else n for n in client.smembers(_names_key(queue))
    )
    if not names:
        return []
    values = client.mget([budget_key(queue, name) for name in names])
    gone = [name for name, value in zip(names, values, strict=True) if value is None]
    if gone:
        client.srem(_names_key(queue), *gone)
    return [WorkerBudget.model_validate_json(v) for v in values if v is not None]


def largest(budgets: list[WorkerBudget]) -> WorkerBudget | None:
    """The budget a job is admitted against: the largest (ties: by name, for a stable answer)."""
    return max(budgets, key=lambda b: (b.memory_budget_mb, b.worker), default=None)
