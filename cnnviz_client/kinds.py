"""Each kind of job as the client sees it, from the contract's rows (:mod:`schemas.routes`):
its submit route and the typed view of its jobs. A kind whose schema the client has not
imported is read with dicts."""

from __future__ import annotations

import json
from typing import Any

# Importing a kind's schema module declares its row (schemas.routes.job_route).
from schemas import dissection, sanity  # noqa: F401 (their rows)
from schemas.attributions import AttributionJobCreate, AttributionsRead
from schemas.exemplars import ExemplarsCreate, ExemplarsResult
from schemas.jobs import JobRead
from schemas.optimization import OptimizationCreate, OptimizationResult
from schemas.routes import JobRoute, job_routes, kind_name

# The typed views of the kinds the client has methods for (the service answers these types).
OptimizationJob = JobRead[OptimizationCreate, OptimizationResult]
ExemplarsJob = JobRead[ExemplarsCreate, ExemplarsResult]
AttributionJob = JobRead[AttributionJobCreate, AttributionsRead]
AnyJob = JobRead[dict[str, Any], dict[str, Any]]

JOB_ROUTES: dict[str, JobRoute] = {route.kind: route for route in job_routes()}
JOB_TYPES: dict[str, type[JobRead[Any, Any]]] = {
    kind: JobRead[route.request, route.result]  # type: ignore[name-defined]
    for kind, route in JOB_ROUTES.items()
}


def parse_job(content: bytes | str) -> JobRead[Any, Any]:
    """A job's JSON, typed by its kind."""
    kind = json.loads(content).get("kind", "")
    return JOB_TYPES.get(kind_name(kind), AnyJob).model_validate_json(content)
