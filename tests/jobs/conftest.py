"""Fixtures of the job tests: real Redis servers, real Celery workers, the API over HTTP.

Scopes: one Redis and one worker for the whole session serve the tests that only need a
working queue; a test that stops Redis or kills a worker starts its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from service.settings import Settings
from tests.jobs.client import settle
from tests.jobs.datasets import write_image_folder, write_models_file
from tests.jobs.procs import CALLBACK_SECRET, CeleryWorker, RedisServer, serve
from tests.jobs.sanity_nets import planted_models

# In-process with records in memory and in SQLite (a data directory of the test's own).
TRANSPORTS = ["in-process", "in-process-sqlite", "celery"]


def api_settings(redis_url: str | None, **overrides: object) -> Settings:
    """Settings of a test API: explicit, so CNNVIZ_* variables of the shell do not leak in."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "models_file": None,
        "job_progress_interval": 0.1,
        "job_preview_interval": 0.2,
        "queue_check_interval": 0.0,
        "callback_hosts": "127.0.0.1",
        "callback_secret": CALLBACK_SECRET,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="session")
def models_file(workdir: Path) -> Path:
    """A models file that declares the small on-disk data set ``small`` and the planted
    nets of the sanity checks (the API and the shared worker read the same file, as in
    production)."""
    root = write_image_folder(workdir / "images")
    path = write_models_file(workdir / "models.toml", root)
    with path.open("a", encoding="utf-8") as file:
        file.write("\n" + planted_models(workdir / "planted"))
    return path


@pytest.fixture(scope="session")
def shared_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_worker(
    shared_redis: RedisServer, workdir: Path, models_file: Path
) -> Iterator[CeleryWorker]:
    env = {"CNNVIZ_MODELS_FILE": str(models_file), "CNNVIZ_EXEMPLAR_SHARD_IMAGES": "100"}
    worker = CeleryWorker(shared_redis.url, workdir, env).start()
    yield worker
    worker.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start again."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(params=TRANSPORTS)
def api(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The API over HTTP with each transport; Celery's with the shared worker running."""
    if request.param == "celery":
        worker: CeleryWorker = request.getfixturevalue("shared_worker")
        settings = api_settings(worker.redis_url)
    elif request.param == "in-process-sqlite":
        data_dir = request.getfixturevalue("tmp_path") / "data"
        settings = api_settings(None, exemplar_shard_images=100, data_dir=str(data_dir))
    else:
        settings = api_settings(None, exemplar_shard_images=100)
    settings.models_file = request.getfixturevalue("models_file")
    with serve(create_app(settings)) as client:
        yield client
        # Leave the shared worker idle for the next test.
        settle(client)
