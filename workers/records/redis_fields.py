"""A job record as a Redis hash: flat string fields that follow the record's model fields, so
a field added to :class:`schemas.jobs.JobRecord` is stored and read back with no other change
(numbers as text, models and containers as JSON, absent values left out)."""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from schemas.jobs import JobRecord

__all__ = ["from_fields", "to_fields"]


def to_fields(record: JobRecord) -> dict[str, str]:
    """The Redis hash fields of ``record``; absent values are left out."""
    fields: dict[str, str] = {}
    for name, value in record.model_dump(mode="json", exclude_none=True).items():
        if isinstance(value, bool):
            fields[name] = "1" if value else "0"
        elif isinstance(value, float):
            fields[name] = repr(value)
        elif isinstance(value, dict | list):
            fields[name] = json.dumps(value, separators=(",", ":"))
        else:
            fields[name] = str(value)
    return fields


def from_fields(raw: dict[Any, Any]) -> JobRecord:
    """Parse a hash as redis-py returns it (bytes or str keys and values).

    Fields the record does not know (a backend's own bookkeeping) are ignored.
    """
    text = {_text(k): _text(v) for k, v in raw.items()}
    values: dict[str, Any] = {}
    for name, field in JobRecord.model_fields.items():
        value = text.get(name)
        if value is None or value == "":
            continue
        # Scalars as text: pydantic's lax mode reads "3", "1.5", "1"/"0" and enum values.
        values[name] = json.loads(value) if _is_json(field.annotation) else value
    return JobRecord.model_validate(values)


def _is_json(annotation: Any) -> bool:
    """Whether a field of this type is stored as JSON text: a model or a container."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    for option in options or (annotation,):
        if option is type(None):
            continue
        origin = get_origin(option) or option
        if isinstance(origin, type) and issubclass(origin, BaseModel | dict | list):
            return True
    return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
