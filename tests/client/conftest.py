"""The client and the CLI against a real uvicorn serving the app (jobs in-process), with a
small on-disk data set (``small``) beside the built-in ones.

The server is imported in the fixtures only, so that the tests that need none
(``test_offline.py``) run where only the client's distribution is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _pytest.capture import CaptureResult

SMALL_IMAGES = 24
# The ``cnnviz_run`` fixture's runner.
CliRun = Callable[..., "CaptureResult[str]"]


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.jobs.datasets import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("client") / "images", n=SMALL_IMAGES)


@pytest.fixture(scope="session")
def service_url(dataset_root: Path) -> Iterator[str]:
    from service.main import create_app
    from service.settings import Settings
    from tests.api.conftest import serve
    from tests.jobs.datasets import write_models_file

    models_file = write_models_file(dataset_root.parent / "models.toml", dataset_root)
    settings = Settings(
        redis_url=None, models_file=models_file, api_keys=None, job_progress_interval=0.1
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def cnnviz_run(service_url: str, capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Runs ``cnnviz --url <the service> ARGS...`` in this process: asserts it exits 0, and
    answers what it printed since the last reading (``out`` and ``err``)."""
    from cnnviz_client.cli import main

    def run(*args: str) -> CaptureResult[str]:
        assert main(["--url", service_url, *args]) == 0
        return capsys.readouterr()

    return run
