"""Sharing the cores: each running claim gets cores ÷ running torch threads, in its thread."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

import cnnviz.threads as threads_module
from cnnviz.threads import CoreShare, SharedCounter


def _threads_seen(share: CoreShare, claims: int) -> list[int]:
    """Start ``claims`` claims at once; the torch threads each saw once all were running."""
    barrier = threading.Barrier(claims)
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        with share.claim() as claim:
            barrier.wait(timeout=30)
            claim.refresh()
            with lock:
                seen.append(torch.get_num_threads())
            barrier.wait(timeout=30)  # nobody leaves before all have looked

    threads = [threading.Thread(target=work) for _ in range(claims)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return seen


def test_a_claim_alone_has_every_core_and_several_share_them() -> None:
    share = CoreShare(4)
    assert _threads_seen(share, 1) == [4]
    assert _threads_seen(share, 2) == [2, 2]
    assert _threads_seen(share, 6) == [1] * 6  # never fewer than one, never oversubscribed
    assert share.running == 0


def test_idle_hands_the_share_back_while_waiting() -> None:
    share = CoreShare(4)
    with share.claim():
        with share.claim() as inner:
            assert inner.threads == 2 and share.running == 2
            with share.idle():
                assert share.running == 1
            assert share.running == 2 and torch.get_num_threads() == 2
        assert share.running == 1
    assert share.running == 0


def test_a_background_claim_yields_every_core_to_the_others_and_has_them_alone() -> None:
    share = CoreShare(4)
    with share.claim(background=True) as job:
        assert job.threads == 4 and share.running == 0  # alone: every core
        with share.claim() as request:
            assert request.threads == 4  # the job takes no share from a request
            assert job.refresh() == 1  # and keeps one thread while the request runs
            with share.claim() as second:
                assert second.threads == 2 and job.refresh() == 1  # requests share as before
        assert job.refresh() == 4  # the requests are done: every core again
        with share.claim(background=True) as other_job:
            assert other_job.threads == 2 and job.refresh() == 2  # jobs share among themselves
            with share.idle():
                assert job.refresh() == 4  # one job waiting hands its share back
    assert share.running == 0 and share.threads_now(background=True) == 4


def test_a_background_claim_pauses_between_steps_only_while_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(threads_module.time, "sleep", pauses.append)
    share = CoreShare(2)
    with share.claim(background=True) as job:
        threading.Event().wait(0.05)  # a step's work, alone
        job.refresh()
        assert pauses == []  # alone: no pause
        with share.claim():
            threading.Event().wait(0.05)  # a step's work beside a request
            job.refresh()
            assert len(pauses) == 1 and 0.05 <= pauses[0] <= 0.5  # as long as it worked
        job.refresh()
        assert len(pauses) == 1


def _hold(counter: SharedCounter, started: object, release: object) -> None:
    counter.add(1)
    started.set()  # type: ignore[attr-defined]
    release.wait(30)  # type: ignore[attr-defined]


def test_a_shared_counter_counts_claims_of_forked_processes() -> None:
    index = {"slot": 0}
    counter = SharedCounter(lambda: index["slot"])
    share = CoreShare(4, counter)
    context = multiprocessing.get_context("fork")
    started, release = context.Event(), context.Event()
    index["slot"] = 1  # the child counts in slot 1 (a pool child's index)
    child = context.Process(target=_hold, args=(counter, started, release))
    child.start()
    index["slot"] = 0
    try:
        assert started.wait(30)
        assert share.running == 1
        with share.claim() as claim:  # the parent's claim shares with the child's
            assert claim.threads == 2
    finally:
        release.set()
        child.join(30)
    # The child exited without giving its count back (as a killed one would): its
    # replacement in the same slot zeroes it.
    assert share.running == 1
    index["slot"] = 1
    counter.reset()
    assert share.running == 0


def test_expected_claims_count_as_running() -> None:
    # A pool with calls waiting for a slot: the one that starts gets its share, not every core.
    share = CoreShare(cores=4)
    waiting = [1]
    share.expect(lambda: waiting[0])
    before = torch.get_num_threads()
    try:
        with share.claim() as claim:
            assert claim.threads == 2
            waiting[0] = 0
            assert claim.refresh() == 4
    finally:
        torch.set_num_threads(before)  # the claim set this thread's count
