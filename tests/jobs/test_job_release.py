"""A job's kept memory goes back to the system when its shard ends (see cnnviz.allocator)."""

from __future__ import annotations

import pytest

from cnnviz.allocator import keeping_freed_memory
from service.main import create_app
from tests.jobs.client import LONG, QUICK, submit, wait_job
from tests.jobs.conftest import api_settings
from tests.jobs.procs import serve
from workers import run


def test_the_api_keeps_freed_memory_and_a_job_releases_it_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[int] = []
    monkeypatch.setattr(run, "release_freed_memory", lambda: released.append(1))
    with serve(create_app(api_settings(None))) as api:
        assert keeping_freed_memory()  # the default, set up with the app
        job = submit(api, QUICK)
        assert wait_job(api, job["id"])["status"] == "succeeded"
    assert released == [1]  # one shard, one release


def test_a_cancelled_job_releases_its_memory_too(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[int] = []
    monkeypatch.setattr(run, "release_freed_memory", lambda: released.append(1))
    with serve(create_app(api_settings(None))) as api:
        job = submit(api, LONG)
        wait_job(api, job["id"], {"running"})
        assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
        assert wait_job(api, job["id"])["status"] == "cancelled"
    assert released == [1]
