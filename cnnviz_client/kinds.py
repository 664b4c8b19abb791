"""The typed view of each kind of job, read from its ``kind``; another kind is read with dicts.

``tests/client/test_routes.py`` checks this table against the service's registered kinds, so
a kind added there without its row here fails a test.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.attributions import AttributionsCreate, AttributionsRead
from schemas.exemplars import ExemplarsCreate, ExemplarsResult
from schemas.jobs import JobRead
from schemas.optimization import OptimizationCreate, OptimizationResult

OptimizationJob = JobRead[OptimizationCreate, OptimizationResult]
ExemplarsJob = JobRead[ExemplarsCreate, ExemplarsResult]
AttributionJob = JobRead[AttributionsCreate, AttributionsRead]
AnyJob = JobRead[dict[str, Any], dict[str, Any]]

JOB_TYPES: dict[str, type[JobRead[Any, Any]]] = {
    "optimization": OptimizationJob,
    "exemplars": ExemplarsJob,
    "attribution": AttributionJob,
}


def parse_job(content: bytes | str) -> JobRead[Any, Any]:
    """A job's JSON, typed by its kind."""
    kind = json.loads(content).get("kind", "")
    return JOB_TYPES.get(kind, AnyJob).model_validate_json(content)
