"""The callback courier: the API delivers every job's callback, from the records' outbox.

Whatever ends a job (a Celery pool child, the in-process executor, the sweeper) only makes
its callback due (:mod:`workers.records.outbox`), one write; the courier, a loop in each API
process, claims what is due every ``CNNVIZ_CALLBACK_POLL_INTERVAL`` seconds and makes one
try of each on a thread of its own. A failed try (unreachable, 5xx, 429) is put back, due
after the backoff, until ``CNNVIZ_CALLBACK_ATTEMPTS`` tries are made.

Why in the API rather than a Celery task on a queue of its own: the in-process transport has
no Celery, and both transports must deliver the same way; the API already runs the lease
sweeper, and a callbacks queue would need its own workers deployed and watched. Why not in
the pool child that ran the job, as before: a receiver that answers slowly held the child
(about 24 s with four tries of a 5 s timeout) while jobs waited for it.

What is due is kept in the records (Redis, or SQLite under ``CNNVIZ_DATA_DIR``), so a
callback due when the API stops is delivered after it starts again; a claim is leased and
fenced, so two API processes never deliver one try twice.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field

import httpx

from service.jobs.callbacks import CallbackPolicy, Outcome, try_once
from service.jobs.rounds import every
from workers.records import JobNotFound, JobRecords, RecordsUnavailable
from workers.records.outbox import Due

__all__ = ["CLAIM_LEASE_S", "CallbackCourier"]

log = logging.getLogger(__name__)

CLAIM_LEASE_S = 60.0
"""How long a claim keeps a callback from other API processes: above the longest one try
takes (httpx's 5 s for each of connect, write and read). An API process lost mid-try leaves
the try to be made again this much later."""


@dataclass(eq=False)
class CallbackCourier:
    """Delivers the due callbacks of ``records``, at most ``concurrency`` tries at a time.

    ``policy`` None (no ``CNNVIZ_CALLBACK_SECRET``): due callbacks are dropped, with an error
    logged. ``outcomes`` counts the tries made by this courier, by outcome.
    """

    records: JobRecords
    policy: CallbackPolicy | None
    _: KW_ONLY
    interval_s: float
    lease_s: float = CLAIM_LEASE_S
    concurrency: int = 8
    outcomes: Counter[Outcome] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="callbacks")
        self._client = httpx.Client(follow_redirects=False)
        self._lock = threading.Lock()
        self._in_flight = 0

    async def run(self) -> None:
        """Deliver until cancelled; an unreachable store is logged and tried again."""
        await every(
            self.interval_s,
            self.deliver_due,
            log,
            "callbacks: cannot read the outbox",
            "callbacks: a round failed",
        )

    def deliver_due(self) -> list[Future[None]]:
        """Claim what is due, as many as there are free threads, and try each on one; the
        tries (blocking: the claim is a store call)."""
        with self._lock:
            free = self.concurrency - self._in_flight
            if free <= 0:
                return []
            self._in_flight += free  # reserved: given back below for what was not claimed
        claims: list[Due] = []
        try:
            claims = self.records.callbacks.claim(self.lease_s, free)
        finally:
            with self._lock:
                self._in_flight -= free - len(claims)
        return [self._pool.submit(self._deliver, due) for due in claims]

    def _deliver(self, due: Due) -> None:
        try:
            self._settle(due, self._try(due))
        except RecordsUnavailable as exc:  # the claim lapses and the try is made again
            log.warning("job %s: callback left for later: %s", due.job_id, exc)
        except Exception:
            log.exception("job %s: callback failed", due.job_id)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _try(self, due: Due) -> Outcome | None:
        """One try; None when there is nothing to send (the job is gone, or no secret)."""
        try:
            record = self.records.get(due.job_id)
        except JobNotFound:
            return None
        if record.callback_url is None:
            return None
        if self.policy is None:
            log.error("job %s: no callback sent, CNNVIZ_CALLBACK_SECRET is not set", due.job_id)
            return None
        outcome = try_once(self._client, record.callback_url, record, self.policy)
        with self._lock:
            self.outcomes[outcome] += 1
        return outcome

    def _settle(self, due: Due, outcome: Outcome | None) -> None:
        retry_in = None
        if outcome == Outcome.FAILED:
            assert self.policy is not None
            retry_in = self.policy.backoff(due.tries + 1)
            if retry_in is None:
                log.error("job %s: callback failed after %d tries", due.job_id, due.tries + 1)
            else:
                log.warning("job %s: callback tried again in %g s", due.job_id, retry_in)
        self.records.callbacks.settle(due, retry_in)

    def close(self) -> None:
        """Let the tries under way end (each within its timeouts), then stop."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()
