"""Objectives are rows: the request's Python check and its JSON-Schema rules are both made from
them, so the two say the same thing for every objective."""

from __future__ import annotations

from typing import Any

import jsonschema_rs  # schemathesis's validator
import pytest
from pydantic import ValidationError

from schemas.objectives import OBJECTIVES, ObjectiveKind
from schemas.optimization import OptimizationCreate

SCHEMA = OptimizationCreate.model_json_schema()
FIELD_VALUES = {
    "neuron": {"channel": 1},
    "direction": [1.0, 0.0],
    "caricature": {"sample": "triangle"},
}


def _verdicts(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the Python check and the JSON Schema each accept ``body``."""
    try:
        OptimizationCreate.model_validate(body)
        python = True
    except ValidationError:
        python = False
    return python, jsonschema_rs.is_valid(SCHEMA, body)


def _cases() -> list[tuple[dict[str, Any], bool]]:
    """Bodies for every row, each with whether it must be accepted."""
    cases: list[tuple[dict[str, Any], bool]] = []
    for kind, row in OBJECTIVES.items():
        body: dict[str, Any] = {"layer": "block3.relu", "objective": kind.value}
        if row.field is not None:
            cases.append((body, False))  # its field missing
            cases.append(({**body, row.field: FIELD_VALUES[row.field]}, True))
            if row.implied:  # the field alone chooses it
                cases.append(({"layer": "x", row.field: FIELD_VALUES[row.field]}, True))
        else:
            cases.append((body, True))
        for other, value in FIELD_VALUES.items():  # another objective's field
            if other != row.field:
                cases.append(({**body, other: value}, False))
        cases.append(({**body, "images_per_unit": 2, **_own(row.field)}, not row.one_image))
    return cases


def _own(field: str | None) -> dict[str, Any]:
    return {} if field is None else {field: FIELD_VALUES[field]}


@pytest.mark.parametrize(("body", "accepted"), _cases())
def test_the_check_and_the_schema_agree_with_each_row(body: dict[str, Any], accepted: bool) -> None:
    assert _verdicts(body) == (accepted, accepted)


def test_every_objective_has_its_row() -> None:
    assert set(OBJECTIVES) == set(ObjectiveKind)
