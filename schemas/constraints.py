"""Rules between fields, written as JSON Schema so that the OpenAPI document carries them.

Each model still checks its rules in a validator (the message names the way out); these
fragments say the same in the schema, so a generated client or a fuzzer knows them too.
"""

from __future__ import annotations

from typing import Any

_NOT_NULL = {"not": {"type": "null"}}
_ABSENT_OR_NULL = {"type": "null"}


def exactly_one(*fields: str) -> dict[str, Any]:
    """``oneOf``: exactly one of ``fields`` is given (and not null)."""
    branches = []
    for field in fields:
        others = {o: _ABSENT_OR_NULL for o in fields if o != field}
        branches.append({"required": [field], "properties": {field: _NOT_NULL, **others}})
    return {"oneOf": branches}


def at_most_one(*fields: str) -> dict[str, Any]:
    """``not``: never two of ``fields`` given (not null) together (all pairs, for two or more)."""
    pairs = [(a, b) for i, a in enumerate(fields) for b in fields[i + 1 :]]
    both = [{"required": [a, b], "properties": {a: _NOT_NULL, b: _NOT_NULL}} for a, b in pairs]
    return {"not": {"anyOf": both}}


def present(field: str) -> dict[str, Any]:
    """``field`` is given and not null."""
    return {"required": [field], "properties": {field: _NOT_NULL}}


def when(field: str, values: list[Any], then: dict[str, Any]) -> dict[str, Any]:
    """``if``/``then``: when ``field`` is given with one of ``values``, ``then`` holds."""
    return {
        "if": {"required": [field], "properties": {field: {"enum": values}}},
        "then": then,
    }


def given(field: str, then: dict[str, Any]) -> dict[str, Any]:
    """``if``/``then``: when ``field`` is given (not null), ``then`` holds."""
    return {"if": present(field), "then": then}
