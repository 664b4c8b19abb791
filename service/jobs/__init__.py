"""Optimization jobs in the API: the store of job records and the queue, behind one manager."""

from service.jobs.manager import JobManager
from service.jobs.wiring import build_jobs

__all__ = ["JobManager", "build_jobs"]
