"""Bounded concurrency for torch work on the synchronous path.

Torch runs in worker threads, never on the event loop. At most ``concurrency`` calls run at
once and at most ``backlog`` more wait; past that the caller gets :class:`ServiceBusy` at once
(503 with ``Retry-After``) rather than an unbounded queue.

Each call runs under a claim of the process's :class:`~cnnviz.threads.CoreShare` (shared with
the in-process jobs): alone it has every core, with others running it has its fair share. Its
:class:`~service.batching.MicroBatcher` batches the forward passes of concurrent requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from cnnviz.threads import CoreShare, LocalCounter
from service.batching import MicroBatcher

T = TypeVar("T")


class ServiceBusy(Exception):
    """Every torch slot is taken and the backlog is full."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the service is busy; retry in {retry_after} s")


class TorchPool:
    """Runs blocking torch calls in threads with a bound on running and waiting calls."""

    def __init__(
        self,
        concurrency: int,
        backlog: int,
        cores: CoreShare | None = None,
        batcher: MicroBatcher | None = None,
    ) -> None:
        self.capacity = concurrency + backlog
        self._concurrency = concurrency
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._admitted = 0
        self._in_calls = LocalCounter()  # calls in _claimed, waiting in a batch included
        self.cores = cores if cores is not None else CoreShare()
        self.cores.expect(self.about_to_run)
        self.batcher = batcher if batcher is not None else MicroBatcher(self.cores)

    @property
    def admitted(self) -> int:
        """Calls running or waiting now (the metrics read it)."""
        return self._admitted

    def about_to_run(self) -> int:
        """Calls of this pool that will run at once but hold no claim yet: with calls waiting
        for a slot, every slot is about to be busy again, so a call that starts as another
        ends takes its share, not every core. Read from worker threads without the event
        loop's lock: a stale count only shifts one call's thread count."""
        return max(0, min(self._admitted, self._concurrency) - self._in_calls.value)

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a thread; ServiceBusy when the pool is full."""
        if self._admitted >= self.capacity:
            raise ServiceBusy(retry_after=1)
        # The event loop is single-threaded: this counter needs no lock.
        self._admitted += 1
        try:
            return await anyio.to_thread.run_sync(self._claimed, func, *args, limiter=self._limiter)
        finally:
            self._admitted -= 1

    def _claimed(self, func: Callable[..., T], *args: object) -> T:
        self._in_calls.add(1)
        try:
            with self.cores.claim():
                return func(*args)
        finally:
            self._in_calls.add(-1)
