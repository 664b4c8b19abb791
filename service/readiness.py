"""Readiness from state: what ``/readyz`` reports, without waiting for a torch slot.

The built-in model is loaded once, off the event loop, while the app starts (uvicorn listens
once it is done, a fraction of a second); ``/readyz`` reads how that went. The queue's checks
(Redis reachable and persistent, workers seen) are asked of the job manager, which answers
from a cache it refreshes in the background.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread

from cnnviz.models import BUILTIN_MODEL, ModelRegistry

log = logging.getLogger(__name__)


class ModelReadiness:
    """Whether the built-in model loads: ``loading``, then ``ok`` or ``failed`` with why."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._state = "loading"
        self._reason: str | None = None

    async def load(self) -> None:
        """Load the built-in model in a thread; a failure is recorded, not raised."""
        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        try:
            self._registry.get(BUILTIN_MODEL)
        except Exception as exc:  # readiness reports every failure rather than raising it
            log.warning("the built-in model cannot be loaded: %s", exc)
            self._state, self._reason = "failed", str(exc)
        else:
            self._state = "ok"

    def check(self) -> dict[str, Any]:
        """The ``models`` check of /readyz."""
        check: dict[str, Any] = {"ok": self._state == "ok", "state": self._state}
        if self._reason is not None:
            check["reason"] = self._reason
        registry = self._registry
        check["loaded"] = [spec.name for spec in registry if registry.is_loaded(spec.name)]
        check["errors"] = self._registry.errors
        # A models file that could not be read again: the last good entries serve meanwhile.
        check["problems"] = self._registry.problems
        return check
