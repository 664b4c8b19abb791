"""Every optimization example of /docs is accepted and runs on the built-in model."""

from __future__ import annotations

import pytest

from cnnviz.models import ModelRegistry
from schemas.jobs import OptimizationCreate, OptimizationTask
from service.routers.jobs import _EXAMPLES
from workers.run import run_job


@pytest.mark.parametrize("name", sorted(_EXAMPLES))
def test_the_docs_example_runs(name: str) -> None:
    body = {**_EXAMPLES[name]["value"], "steps": 2, "image_size": 32}
    request = OptimizationCreate.model_validate(body)
    loaded = ModelRegistry.from_file(None).get("shapes")
    task = OptimizationTask(job_id="j", model="shapes", request=request, ttl_seconds=60)
    result = run_job(task, loaded)
    assert result.units and all(unit.image for unit in result.units)
