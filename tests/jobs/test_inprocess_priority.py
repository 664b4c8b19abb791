"""In-process jobs run on threads of lower scheduling priority than the API's own."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from service.jobs import inprocess
from service.jobs.inprocess import InProcessTransport
from workers.records.memory import MemoryRecords
from workers.run import Limits


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _run_one_job(monkeypatch: pytest.MonkeyPatch, nice: int) -> int:
    """The priority the job's thread ran at (the job itself stands in for the runner)."""
    seen: list[int] = []
    done = threading.Event()

    def execute(*_: Any) -> None:
        seen.append(_priority())
        done.set()

    monkeypatch.setattr(inprocess, "execute", execute)
    transport = InProcessTransport(
        MemoryRecords(60),
        None,  # type: ignore[arg-type]  # the stand-in runner needs no resources
        workers=1,
        backlog=0,
        limits=Limits(soft_time_limit_s=60),
        nice=nice,
    )
    try:
        asyncio.run(transport.submit(object()))  # type: ignore[arg-type]
        assert done.wait(10), "the job never ran"
    finally:
        asyncio.run(transport.close())
    return seen[0]


def test_job_threads_run_at_a_lower_priority_and_the_api_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = _priority()
    assert _run_one_job(monkeypatch, nice=5) == min(19, own + 5)
    assert _priority() == own  # the calling (API) thread is untouched


def test_nice_zero_leaves_job_threads_as_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_one_job(monkeypatch, nice=0) == _priority()
