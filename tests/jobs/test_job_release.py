"""Freed memory is kept while jobs run, and given back after each one (see cnnviz.allocator).

The in-process transport's release after each job: tests/jobs/test_result_cap.py.
"""

from __future__ import annotations

import pytest
from celery.signals import task_postrun

import service.main
import workers.app
from service.main import create_app
from tests.jobs.conftest import api_settings


def test_the_api_keeps_freed_memory_by_default_and_not_when_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Recorded, not read back from the allocator: the setting is process-wide, and importing
    # workers.app (as this module does) already turned it on.
    kept: list[int] = []
    monkeypatch.setattr(service.main, "keep_freed_memory", lambda: kept.append(1) or True)
    create_app(api_settings(None))
    assert kept == [1]
    create_app(api_settings(None, keep_freed_memory=False))
    assert kept == [1]


def test_a_celery_pool_child_gives_memory_back_after_each_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[int] = []
    monkeypatch.setattr(workers.app, "release_freed_memory", lambda: released.append(1))
    # What Celery sends in the pool child when a task (a job, a shard, a merge) returns.
    task_postrun.send(sender=None, task_id="t")
    assert released == [1]
