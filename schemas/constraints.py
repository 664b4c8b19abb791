"""Rules between fields, written as JSON Schema so that the OpenAPI document carries them.

Each model still checks its rules in a validator (the message names the way out); these
fragments say the same in the schema, so a generated client or a fuzzer knows them too. The
validators of the two rules that several models share are made here as well
(:func:`exactly_one_given`, :func:`at_most_one_given`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, model_validator

ModelT = TypeVar("ModelT", bound=BaseModel)

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


def exactly_one_given(*fields: str, message: str) -> Any:
    """A model validator (assign it in the class body): ValueError(``message``) unless exactly
    one of ``fields`` is given (not None); :func:`exactly_one` is the same rule in the schema."""
    return _count_given(fields, lambda given: given == 1, message)


def at_most_one_given(*fields: str, message: str) -> Any:
    """A model validator: ValueError(``message``) when two or more of ``fields`` are given (not
    None); :func:`at_most_one` is the same rule in the schema."""
    return _count_given(fields, lambda given: given <= 1, message)


def _count_given(fields: tuple[str, ...], allowed: Callable[[int], bool], message: str) -> Any:
    def check(model: ModelT) -> ModelT:
        if not allowed(sum(getattr(model, field) is not None for field in fields)):
            raise ValueError(message)
        return model

    return model_validator(mode="after")(check)
