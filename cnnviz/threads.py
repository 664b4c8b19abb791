"""Sharing the CPU cores among the torch calls that run at once.

torch's intra-op thread count is a property of the calling thread (OpenMP keeps it per
thread): :func:`torch.set_num_threads` in one thread leaves the others as they were. A
:class:`CoreShare` uses that to give each running call ``cores ÷ running`` threads: a call
that runs alone uses every core, two calls get half each, and more calls than cores get one
thread each, so OpenMP teams never oversubscribe the cores (a team that spins for cores it
cannot get is what makes oversubscription slow). A long call (a job's optimization steps)
calls :meth:`Claim.refresh` between steps to follow the count as others start and end.
A *background* claim (a job beside synchronous requests) takes no share from the others: it
has the cores when nothing else runs, and one thread when something does.

The count lives in a :class:`Counter`: a plain one for the threads of one process, or a
:class:`SharedCounter` in shared memory for the processes forked from one parent (a Celery
worker's pool children)::

    share = CoreShare()                   # all the cores this process may run on
    with share.claim() as claim:          # this thread now has cores ÷ running threads
        for step in range(steps):
            claim.refresh()
            ...
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

# The longest a background claim pauses between two steps beside other claims.
_MAX_PAUSE_S = 0.5

__all__ = ["Claim", "CoreShare", "Counter", "LocalCounter", "SharedCounter", "available_cores"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Counter(Protocol):
    """A count of running claims, changed atomically."""

    def add(self, delta: int) -> int:
        """Add ``delta``; the new count."""

    @property
    def value(self) -> int: ...


class LocalCounter:
    """A count shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, delta: int) -> int:
        with self._lock:
            self._value += delta
            return self._value

    @property
    def value(self) -> int:
        return self._value


class SharedCounter:
    """A count in shared memory, for processes forked after it was made.

    Each process counts in its own slot (``slot()``, e.g. a pool child's index), and the
    count is the sum of the slots: a process that was killed while it counted leaves its
    slot behind, and its replacement, with the same index, zeroes it (:meth:`reset`).
    """

    def __init__(self, slot: Callable[[], int], slots: int = 256) -> None:
        self._slots = multiprocessing.get_context("fork").Array("i", slots)
        self._slot = slot

    def _index(self) -> int:
        return self._slot() % len(self._slots)

    def reset(self) -> None:
        """Zero this process's slot (at the start of a process that replaces another)."""
        with self._slots.get_lock():
            self._slots[self._index()] = 0

    def add(self, delta: int) -> int:
        with self._slots.get_lock():
            self._slots[self._index()] += delta
            return self._total()

    def _total(self) -> int:
        return sum(int(count) for count in self._slots[:])

    @property
    def value(self) -> int:
        return self._total()


class Claim:
    """One running call's share of the cores; see :meth:`CoreShare.claim`."""

    def __init__(self, share: CoreShare, background: bool = False) -> None:
        self._share = share
        self.background = background
        self.threads = 0
        self._since = time.monotonic()

    def refresh(self) -> int:
        """Set this thread's torch threads to its share now; returns it.

        A background claim called while other claims run first pauses for as long as it
        worked since its last call (at most half a second): between its steps it then leaves
        the cores *and* the interpreter lock to the others half of the time, which a lower
        OS priority alone cannot do for the lock.
        """
        if self.background and self._share.foreground() > 0:
            worked = time.monotonic() - self._since
            time.sleep(min(worked, _MAX_PAUSE_S))
        self._since = time.monotonic()
        threads = self._share.threads_now(self.background)
        if threads != self.threads or torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads


class CoreShare:
    """``cores`` shared among the claims running at once (see the module doc)."""

    def __init__(self, cores: int | None = None, counter: Counter | None = None) -> None:
        if cores is not None and cores < 1:
            raise ValueError(f"cores must be at least 1, got {cores}")
        self.cores = cores or available_cores()
        self._running: Counter = counter if counter is not None else LocalCounter()
        self._background = LocalCounter()
        self._local = threading.local()  # the claim the current thread holds, if any
        self._expected: list[Callable[[], int]] = []

    @property
    def counter(self) -> Counter:
        return self._running

    @property
    def running(self) -> int:
        """Claims running now (background claims not counted)."""
        return self._running.value

    @property
    def running_background(self) -> int:
        """Background claims running now."""
        return self._background.value

    def expect(self, source: Callable[[], int]) -> None:
        """Count ``source()`` more claims as running: calls admitted that are about to claim
        (a pool's queue), so a call that starts between two others does not take every core
        for the instant it runs alone, and then oversubscribe them when the next one starts."""
        self._expected.append(source)

    def foreground(self) -> int:
        """Claims running or about to run, background claims not counted."""
        return self._running.value + sum(max(0, source()) for source in self._expected)

    def threads_now(self, background: bool = False) -> int:
        """The threads one running claim gets now: ``cores ÷ (running + expected)``, at
        least 1. Background claims are not counted there: they share the cores among
        themselves when nothing else runs, and have 1 thread when something does."""
        foreground = self.foreground()
        if background:
            if foreground > 0:
                return 1
            return max(1, self.cores // max(1, self._background.value))
        return max(1, self.cores // max(1, foreground))

    def _counter(self, background: bool) -> Counter:
        return self._background if background else self._running

    @contextlib.contextmanager
    def claim(self, background: bool = False) -> Iterator[Claim]:
        """Count this thread as running torch work for the block, with its share set.

        ``background``: work that yields to the rest (a job beside requests): it takes no
        share from other claims, and gets 1 thread while any of them runs. Pair it with a
        lower OS priority for the thread, so that the core its one thread holds goes to the
        others first (the in-process jobs' threads are lowered so).
        """
        previous = getattr(self._local, "claim", None)
        counter = self._counter(background)
        counter.add(1)
        try:
            claim = Claim(self, background)
            self._local.claim = claim
            claim.refresh()
            yield claim
        finally:
            counter.add(-1)
            self._local.claim = previous

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Hand this thread's claim back for the block (while it waits on others), and take
        its share again after."""
        claim: Claim | None = getattr(self._local, "claim", None)
        if claim is None:
            yield
            return
        counter = self._counter(claim.background)
        counter.add(-1)
        try:
            yield
        finally:
            counter.add(1)
            claim.refresh()
