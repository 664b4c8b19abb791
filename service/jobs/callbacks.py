"""The API's side of callbacks: a job's ``callback_url`` must name an allowed host.

Checked when the job is submitted (422 otherwise), so a worker only ever posts to hosts the
deployment chose (``CNNVIZ_CALLBACK_HOSTS``); it signs with ``CNNVIZ_CALLBACK_SECRET``
(:mod:`workers.callbacks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from service.errors import ApiError


@dataclass(frozen=True)
class CallbackHosts:
    """Host names (lower case) that callbacks may go to; empty: callbacks are off."""

    hosts: frozenset[str]

    def check(self, url: str) -> None:
        """Raise a 422 naming the bad value and the allowed hosts, unless ``url`` may be used."""
        parts = urlsplit(url)
        allowed = ", ".join(sorted(self.hosts)) or "none: callbacks are off (CNNVIZ_CALLBACK_HOSTS)"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(
                422,
                "invalid_callback_url",
                f"callback_url {url[:200]!r} is not an http(s) URL with a host",
            )
        try:
            parts.port  # noqa: B018 (a port out of range raises)
        except ValueError:
            raise ApiError(
                422, "invalid_callback_url", f"callback_url {url[:200]!r} has a bad port"
            ) from None
        if parts.hostname.lower() not in self.hosts:
            raise ApiError(
                422,
                "callback_host_not_allowed",
                f"callback_url host {parts.hostname!r} is not allowed; allowed hosts: {allowed}",
            )
