"""The job id in every log line about a job, in the API and in the workers.

Whatever handles a job (a request about it, the runner, a Celery task) does so inside
:func:`job_logging`; :class:`JobIdFilter`, on a log handler, gives each record the job's id
as ``job_id`` (None outside a job) and ``job_tag`` (`` job=<id>``, or nothing) for formats.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_JOB_ID: ContextVar[str | None] = ContextVar("cnnviz_job_id", default=None)


@contextmanager
def job_logging(job_id: str) -> Iterator[None]:
    """Log lines written inside carry ``job_id``."""
    token = _JOB_ID.set(job_id)
    try:
        yield
    finally:
        _JOB_ID.reset(token)


def set_job_id(job_id: str) -> None:
    """Tag the rest of the current context (a request that just created the job)."""
    _JOB_ID.set(job_id)


class JobIdFilter(logging.Filter):
    """Adds ``job_id`` and ``job_tag`` to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or _JOB_ID.get() or self.job_of(record)
        record.job_id = job_id
        record.job_tag = f" job={job_id}" if job_id else ""
        return True

    def job_of(self, record: logging.LogRecord) -> str | None:
        """The job of a record written outside any job's context (subclasses)."""
        return None
