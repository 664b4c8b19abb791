"""Freed memory is kept while jobs run, and given back after each one (see cnnviz.allocator).

The in-process transport's release after each job: tests/jobs/test_result_cap.py.
"""

from __future__ import annotations

import pytest
from celery.signals import task_postrun

import workers.app
from cnnviz.allocator import keeping_freed_memory
from service.main import create_app
from tests.jobs.conftest import api_settings


def test_the_api_keeps_freed_memory_by_default() -> None:
    create_app(api_settings(None))
    assert keeping_freed_memory()


def test_a_celery_pool_child_gives_memory_back_after_each_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[int] = []
    monkeypatch.setattr(workers.app, "release_freed_memory", lambda: released.append(1))
    # What Celery sends in the pool child when a task (a job, a shard, a merge) returns.
    task_postrun.send(sender=None, task_id="t")
    assert released == [1]
