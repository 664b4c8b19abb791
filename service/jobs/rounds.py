"""Work the API process does in rounds (the lease sweep, the callback deliveries, the
in-process jobs' sweep): one loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio.to_thread

from workers.records import RecordsUnavailable

__all__ = ["every"]


async def every(
    interval_s: float,
    one_round: Callable[[], object],
    log: logging.Logger,
    unavailable: str,
    failed: str,
) -> None:
    """Run ``one_round`` on a thread every ``interval_s`` seconds until cancelled.

    An unreachable store is logged as a warning (``"<unavailable>: <why>"``) and tried again
    next round; any other error is logged with its traceback (``failed``): a bug must not end
    the loop, the next round may succeed.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(one_round)
        except RecordsUnavailable as exc:
            log.warning("%s: %s", unavailable, exc)
        except Exception:
            log.exception(failed)
