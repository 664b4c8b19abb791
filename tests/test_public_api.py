"""The curated public surface of the core: ``cnnviz.__all__`` is the one list of it, and it
names exactly what ``cnnviz/__init__.py`` imports to export, nothing more and nothing less."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import ModuleType

import cnnviz
import cnnviz.optvis

ROOT = Path(__file__).resolve().parents[1]


def documented_names() -> set[str]:
    """The names the README, docs/ and the package's docstring import from ``cnnviz``."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = re.findall(
        r"^\s*from cnnviz import (.+)$",
        "\n".join([*(t.read_text(encoding="utf-8") for t in texts), cnnviz.__doc__ or ""]),
        flags=re.MULTILINE,
    )
    return {name.strip() for line in found for name in line.split(",")}


def imported_names(module: ModuleType) -> list[str]:
    """The names a module's own ``from ... import`` statements bind, in order."""
    tree = ast.parse(inspect.getsource(module))
    return [
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]


def test_the_public_names_are_exactly_what_the_package_imports() -> None:
    imported = imported_names(cnnviz)
    assert len(set(imported)) == len(imported), "a name imported twice"
    assert len(set(cnnviz.__all__)) == len(cnnviz.__all__), "a name listed twice"
    assert set(cnnviz.__all__) == set(imported)
    assert set(cnnviz.__all__) >= documented_names() >= {"ModelRegistry", "visualize"}
    for name in cnnviz.__all__:
        assert getattr(cnnviz, name) is not None


def test_every_error_is_a_cnnviz_error_and_a_standard_one() -> None:
    names = [n for n in cnnviz.__all__ if n.endswith("Error") and n != "CnnvizError"]
    assert names
    for error in (getattr(cnnviz, n) for n in names):
        assert issubclass(error, cnnviz.CnnvizError)
        assert issubclass(error, LookupError | ValueError | RuntimeError)


def test_optvis_exposes_the_render_contract() -> None:
    assert set(cnnviz.optvis.__all__) >= {
        "RenderResult",
        "RenderSettings",
        "StepReport",
        "check_objective",
        "objectives",
        "visualize",
    }
