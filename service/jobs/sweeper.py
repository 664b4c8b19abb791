"""The lease sweeper: jobs whose worker was lost go out again within a minute.

A Celery worker renews a lease on what it runs (:mod:`workers.leases`). When a whole worker
goes away (OOM-killed container, preempted machine), nothing renews it; Celery itself would
give the job back only after the broker's visibility timeout (an hour, above the longest a
job may run). The sweeper, a loop in the API process, claims every lapsed lease every
``CNNVIZ_LEASE_SWEEP_INTERVAL`` seconds and sends the job again as its next attempt (or the
lost shard again), which resumes from the last checkpoint.

Why in the API: it runs whenever jobs can be submitted or read, already talks to Redis and
to the queue, and needs no extra process to deploy (a beat scheduler would be one more
singleton; a sweeper inside workers would stop when the last worker is lost, which is when
it is needed). Many API processes may sweep at once: each claim is one Lua script
(:meth:`~workers.records.redis.RedisRecords.sweep`), so a lapsed lease is claimed once; and
the attempt fencing of the records keeps a job's result written once whatever was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from schemas.jobs import JobTask
from service.jobs.rounds import every
from workers.records import JobNotFound, Lapsed
from workers.records.redis import RedisRecords
from workers.run import Limits, ended

__all__ = ["LeaseSweeper"]

log = logging.getLogger(__name__)

SendJob = Callable[[JobTask, str], None]
"""``(task, task_id)``: send the job's task again."""
SendShard = Callable[[JobTask, int, int, int, str], None]
"""``(task, attempt, shard, shards, task_id)``: send one shard's task again."""


@dataclass(eq=False)
class LeaseSweeper:
    """Claims lapsed leases every ``interval_s`` and sends their jobs (or shards) again, as
    tasks that live ``ttl_seconds``."""

    records: RedisRecords
    send_job: SendJob
    send_shard: SendShard
    _: KW_ONLY
    ttl_seconds: int
    interval_s: float
    limits: Limits
    claimed: dict[str, int] = field(default_factory=dict, init=False)
    """Claims made by this sweeper, by action (``cnnviz_job_leases_lapsed_total``)."""

    async def run(self) -> None:
        """Sweep until cancelled; an unreachable Redis is logged and tried again."""
        await every(self.interval_s, self.sweep, log, "lease sweep skipped", "lease sweep failed")

    def sweep(self) -> list[Lapsed]:
        """One sweep: every lapsed lease claimed and acted on; the claims."""
        claims = self.records.sweep()
        for claim in claims:
            self.claimed[claim.action] = self.claimed.get(claim.action, 0) + 1
            try:
                self._act(claim)
            except JobNotFound:
                continue
            except Exception:  # the claim comes round again one lease later (kept, due then)
                log.exception("job %s: could not send it again", claim.job_id)
        return claims

    def _act(self, claim: Lapsed) -> None:
        task = self.records.get(claim.job_id).task(self.ttl_seconds)
        # A task id of its own per send: the records tell a send from a second copy of it.
        task_id = f"{claim.job_id}~{claim.delivery}"
        if claim.action == "job":
            log.warning(
                "job %s: its worker was lost (lease lapsed in attempt %d); sending it again",
                claim.job_id,
                claim.attempt,
            )
            self.send_job(task, task_id)
        elif claim.action == "shard":
            log.warning(
                "job %s: the worker of shard %d of %d was lost; sending the shard again",
                claim.job_id,
                claim.shard,
                claim.shards,
            )
            self.send_shard(task, claim.attempt, claim.shard, claim.shards, task_id)
        elif claim.action == "cancelled":
            log.info("job %s: cancelled; its worker was lost", claim.job_id)
            ended(task, self.records, self.limits)
