"""Models files for tests, written from Python values: one TOML table per entry."""

from __future__ import annotations

import json
from collections.abc import Mapping


def toml_value(value: object) -> str:
    """``value`` in TOML: JSON's strings, numbers, booleans and arrays are TOML's too, and a
    dict is an inline table."""
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(key)} = {toml_value(v)}" for key, v in value.items())
        return f"{{ {pairs} }}"
    if isinstance(value, list | tuple):
        return f"[{', '.join(toml_value(v) for v in value)}]"
    return json.dumps(value)


def toml_table(name: str, **fields: object) -> str:
    """The TOML table ``[name]`` with ``fields``, after a blank line: a models file's entry
    ``models.<model>`` or ``datasets.<set>``."""
    return f"\n[{name}]\n" + "".join(f"{key} = {toml_value(v)}\n" for key, v in fields.items())


def toml_tables(section: str, tables: Mapping[str, Mapping[str, object]]) -> str:
    """One table ``[section.<name>]`` per entry of ``tables``, with its fields."""
    return "".join(toml_table(f"{section}.{name}", **fields) for name, fields in tables.items())
