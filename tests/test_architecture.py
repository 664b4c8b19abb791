"""The direction of imports (DESIGN.md, "Layout and the direction of imports").

``cnnviz`` and ``schemas`` import nothing of ours; ``workers`` imports ``cnnviz`` and
``schemas``; ``service`` imports ``cnnviz`` and ``schemas`` and, of ``workers``, the job
domain (kinds, records, the runner), never the Celery app or its tasks; ``cnnviz_client``
imports ``schemas`` only. ``schemas`` ships in the client's distribution (client/), so it
imports pydantic and the standard library alone, and the client nothing the client's
distribution does not declare (httpx, pydantic, tqdm). Checked by parsing every import
statement of every file (those inside functions too) with ``ast``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cnnviz", "schemas", "workers", "service", "cnnviz_client")
OURS = frozenset(PACKAGES)
# The modules of workers that hold Celery: nothing else may import them, and only they may
# import Celery.
CELERY_MODULES = ("workers.app", "workers.tasks", "workers.heartbeat")

MAY_IMPORT = {
    "cnnviz": {"cnnviz"},
    "schemas": {"schemas"},
    "workers": {"workers", "cnnviz", "schemas"},
    "service": {"service", "cnnviz", "schemas", "workers"},  # workers: not CELERY_MODULES
    # The client speaks HTTP: no torch, no server; serve and worker find the server by name.
    "cnnviz_client": {"cnnviz_client", "schemas"},
}
WEB_AND_QUEUE = {
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "multipart",
    "pydantic",
    "pydantic_settings",
    "celery",
    "kombu",
    "redis",
}
SCHEMAS_THIRD_PARTY = {"pydantic"}
# What the client's distribution declares (client/pyproject.toml), by import name.
CLIENT_THIRD_PARTY = {"httpx", "pydantic", "tqdm"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module named by an import in ``path``, relative imports resolved.

    ``from a import b`` yields ``a.b`` as well as ``a``: ``b`` may be a submodule.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def files_of(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_of_our_packages_follow_the_design(package: str) -> None:
    files = files_of(package)
    assert files, f"no Python files under {package}/"
    wrong = []
    for path in files:
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in OURS and top not in MAY_IMPORT[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            celery = any(name == m or name.startswith(m + ".") for m in CELERY_MODULES)
            if package == "service" and celery:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_web_queue_or_pydantic_library() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files_of("cnnviz")
        for name in imported_names(path)
        if name.split(".")[0] in WEB_AND_QUEUE
    ]
    assert not wrong, "\n".join(wrong)


def imports_beyond(package: str, allowed: set[str]) -> list[str]:
    """``<file> imports <name>`` for each import in ``package`` of neither the standard library
    nor a top-level name in ``allowed``."""
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files_of(package)
        for name in imported_names(path)
        if (top := name.split(".")[0]) not in sys.stdlib_module_names and top not in allowed
    ]


def test_schemas_import_pydantic_and_the_standard_library_only() -> None:
    wrong = imports_beyond("schemas", {*SCHEMAS_THIRD_PARTY, "__future__", "schemas"})
    assert not wrong, "\n".join(wrong)


def test_the_job_domain_pulls_in_no_celery() -> None:
    """Kinds, records and the runner: the service imports them, so no Celery in them."""
    wrong = []
    for path in files_of("workers"):
        if module_name(path) in CELERY_MODULES:
            continue
        for name in imported_names(path):
            celery = any(name == m or name.startswith(m + ".") for m in CELERY_MODULES)
            if name.split(".")[0] in {"celery", "kombu", "service"} or celery:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_client_imports_only_what_its_distribution_declares() -> None:
    """No torch, no numpy, no server library: httpx, pydantic, tqdm and the standard library."""
    allowed = {*CLIENT_THIRD_PARTY, "__future__", "cnnviz_client", "schemas"}
    wrong = imports_beyond("cnnviz_client", allowed)
    assert not wrong, "\n".join(wrong)


def test_the_client_loads_without_torch_or_the_server() -> None:
    code = (
        "import sys, cnnviz_client, cnnviz_client.cli\n"
        "heavy = {'torch', 'numpy', 'cnnviz', 'service', 'workers', 'fastapi', 'celery'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_the_core_loads_as_a_library_without_the_service() -> None:
    code = (
        "import sys, cnnviz, cnnviz.featuremaps, cnnviz.imaging, cnnviz.layers, cnnviz.models\n"
        f"loaded = sorted(m for m in {sorted(WEB_AND_QUEUE)!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
