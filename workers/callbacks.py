"""Callbacks: an HMAC-signed POST to the ``callback_url`` of a job when it ends.

Whatever ran the job sends it, once the final state is written (the in-process executor, or
the Celery worker), so the receiver can read the job at once. The body is small JSON: the
job's id, kind, model, status, error and its path (``/v1/jobs/{id}``). Headers:

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
from typing import Any

import httpx

from schemas.jobs import JobRecord, job_path

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Cnnviz-Signature"
TIMESTAMP_HEADER = "Cnnviz-Timestamp"


@dataclass(frozen=True)
class CallbackPolicy:
    """The shared secret and how hard a delivery tries."""

    secret: str
    attempts: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 5.0


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


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def deliver(url: str, record: JobRecord, policy: CallbackPolicy) -> bool:
    """POST the job's end to ``url``, signed; True once the receiver answered 2xx."""
    body = json.dumps(payload(record), separators=(",", ":")).encode()
    with httpx.Client(timeout=policy.timeout_s, follow_redirects=False) as client:
        for attempt in range(1, policy.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "Cnnviz-Event": "job.finished",
                "Cnnviz-Delivery": record.id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(policy.secret, timestamp, body),
            }
            try:
                answer = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if answer.is_success:
                    log.info("job %s: callback delivered (attempt %d)", record.id, attempt)
                    return True
                reason = f"HTTP {answer.status_code}"
                if not _retryable(answer.status_code):
                    log.warning("job %s: callback refused (%s); not retried", record.id, reason)
                    return False
            if attempt < policy.attempts:
                delay = policy.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "job %s: callback attempt %d failed (%s); again in %g s",
                    record.id,
                    attempt,
                    reason,
                    delay,
                )
                time.sleep(delay)
            else:
                log.error(
                    "job %s: callback failed after %d attempts (%s)", record.id, attempt, reason
                )
    return False
