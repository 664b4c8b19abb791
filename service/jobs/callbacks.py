"""Callbacks: an HMAC-signed POST to the ``callback_url`` of a job when it ends.

A job's ``callback_url`` must name an allowed host (``CNNVIZ_CALLBACK_HOSTS``), checked when
the job is submitted (422 otherwise). Whatever ends the job only makes its callback due in
the records (:mod:`workers.records.outbox`); the API's courier (:mod:`service.jobs.courier`)
delivers it, once the final state is written, so the receiver can read the job at once. The
body is small JSON: the job's id, kind, model, status, error and its path
(``/v1/jobs/{id}``). Headers:

- ``Cnnviz-Event: job.finished``, ``Cnnviz-Delivery: <job id>`` (deliveries are at least
  once: a receiver drops a repeat by this id);
- ``Cnnviz-Timestamp: <unix seconds>``;
- ``Cnnviz-Signature: sha256=<hex>``: HMAC-SHA256 with the shared secret
  (``CNNVIZ_CALLBACK_SECRET``) of ``<timestamp>.<body bytes>``; a receiver recomputes it,
  compares in constant time, and refuses an old timestamp.

A delivery is tried ``attempts`` times, after ``backoff_s``, twice that, ... between tries,
while the receiver cannot be reached or answers 5xx or 429; any other answer ends it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx

from schemas.jobs import JobRecord, job_path
from service.errors import ApiError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Cnnviz-Signature"
TIMESTAMP_HEADER = "Cnnviz-Timestamp"


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


@dataclass(frozen=True)
class CallbackPolicy:
    """The shared secret and how hard a delivery tries."""

    secret: str
    attempts: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 5.0

    def backoff(self, tries: int) -> float | None:
        """Seconds before the next try after ``tries`` failed ones; None: no more tries."""
        return self.backoff_s * 2 ** (tries - 1) if tries < self.attempts else None


class Outcome(StrEnum):
    """How one try went."""

    DELIVERED = "delivered"  # 2xx
    REFUSED = "refused"  # any other answer but 5xx and 429: not tried again
    FAILED = "failed"  # unreachable, 5xx or 429: tried again while tries are left


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Cnnviz-Signature`` value of a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def payload(record: JobRecord) -> dict[str, Any]:
    """What a callback says of a finished job (read the job itself for its result)."""
    return {
        "id": record.id,
        "kind": record.kind,
        "model": record.model,
        "status": record.status.value,
        "error": record.error.model_dump() if record.error else None,
        "finished_at": record.finished_at,
        "url": job_path(record.id),
    }


def try_once(client: httpx.Client, url: str, record: JobRecord, policy: CallbackPolicy) -> Outcome:
    """POST the job's end to ``url``, signed now; how it went (logged with the reason)."""
    body = json.dumps(payload(record), separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "Cnnviz-Event": "job.finished",
        "Cnnviz-Delivery": record.id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(policy.secret, timestamp, body),
    }
    try:
        answer = client.post(url, content=body, headers=headers, timeout=policy.timeout_s)
    except httpx.HTTPError as exc:
        log.warning("job %s: callback failed (%s: %s)", record.id, type(exc).__name__, exc)
        return Outcome.FAILED
    if answer.is_success:
        log.info("job %s: callback delivered", record.id)
        return Outcome.DELIVERED
    if answer.status_code >= 500 or answer.status_code == 429:
        log.warning("job %s: callback failed (HTTP %d)", record.id, answer.status_code)
        return Outcome.FAILED
    log.warning("job %s: callback refused (HTTP %d); not retried", record.id, answer.status_code)
    return Outcome.REFUSED
