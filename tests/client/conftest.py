"""The client and the CLI against a real uvicorn serving the app (jobs in-process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import serve


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    settings = Settings(redis_url=None, models_file=None, api_keys=None, job_progress_interval=0.1)
    with serve(create_app(settings)) as url:
        yield url
