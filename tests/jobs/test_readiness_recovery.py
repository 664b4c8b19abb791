"""/readyz sees Redis come back within 5 s, with the production check interval.

Before: the workers' answer from before the outage (or a failing one) was served from a
cache refreshed every ``CNNVIZ_QUEUE_CHECK_INTERVAL`` in the background, and a worker retried
its broker connection 2, 4, 6 ... up to 30 s apart: /readyz stayed 503 for more than 12 s
after Redis answered again, while jobs were already accepted. Now a failing answer is asked
again at the next /readyz (at most every second), an outage voids the answer from before it,
and a worker retries its connection every second (workers.app.QuickReconnectConsumer).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.main import create_app
from tests.jobs.conftest import api_settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]

OUTAGE_S = 12  # past the first few of kombu's growing retry intervals (2, 4, 6 s)


def test_readyz_is_ready_within_5_s_of_redis_answering_again(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    worker = CeleryWorker(fresh_redis.url, tmp_path).start()
    try:
        settings = api_settings(fresh_redis.url, queue_check_interval=5.0)  # the default
        with serve(create_app(settings)) as api:
            wait_for(lambda: api.get("/readyz").status_code == 200, 30, "ready at first")
            fresh_redis.stop()
            down_until = time.monotonic() + OUTAGE_S
            while time.monotonic() < down_until:
                assert api.get("/readyz").status_code == 503
                time.sleep(0.5)
            fresh_redis.start()  # same port
            back = time.monotonic()
            wait_for(lambda: api.get("/readyz").status_code == 200, 5, "/readyz 200 again")
            recovered_s = time.monotonic() - back
            # And it stays so: no stale answer from before the outage flips it back.
            for _ in range(10):
                assert api.get("/readyz").status_code == 200
                time.sleep(0.2)
            print(f"/readyz ready {recovered_s:.1f} s after Redis answered again")
    finally:
        worker.stop()
