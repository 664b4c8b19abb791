"""Every optimization example of /docs is accepted and runs on the built-in model."""

from __future__ import annotations

import pytest

from cnnviz.models import ModelRegistry
from schemas.optimization import ROUTE, OptimizationCreate
from workers.kinds.optimization import optimize


@pytest.mark.parametrize("name", sorted(ROUTE.examples))
def test_the_docs_example_runs(name: str) -> None:
    body = {**ROUTE.examples[name]["value"], "steps": 2, "image_size": 32}
    request = OptimizationCreate.model_validate(body)
    loaded = ModelRegistry.from_file(None).get("shapes")
    result = optimize(request, loaded)
    assert result.units and all(unit.image for unit in result.units)
