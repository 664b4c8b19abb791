"""The three distributions: the core brings no web or queue library and no generic top-level
package; the client carries the contract, the client and the command, on httpx, pydantic and
tqdm alone; the service carries the service, workers and viewer, and depends on both."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = {"fastapi", "uvicorn", "celery", "redis", "pydantic", "pydantic-settings", "httpx"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
            str(ROOT / "client"),
            str(ROOT / "server"),
        ],
        check=True,
        timeout=300,
        cwd=out,
    )
    found = {p.name.split("-")[0]: zipfile.ZipFile(p) for p in out.glob("*.whl")}
    assert set(found) == {"cnnviz", "cnnviz_client", "cnnviz_service"}
    return found


def top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" not in n}


def requires(wheel: zipfile.ZipFile) -> list[str]:
    [meta] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(meta).decode()).get_all("Requires-Dist") or []


def names(requirements: list[str]) -> set[str]:
    """The distributions required outside any extra, without their versions."""
    return {
        r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip()
        for r in requirements
        if "extra ==" not in r
    }


def entry_points(wheel: zipfile.ZipFile) -> str:
    found = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    return wheel.read(found[0]).decode() if found else ""


def test_the_core_is_cnnviz_alone(wheels: dict[str, zipfile.ZipFile]) -> None:
    core = wheels["cnnviz"]
    assert top_level(core) == {"cnnviz"}
    assert "cnnviz/models/weights/shapes.safetensors" in core.namelist()
    needed = names(requires(core))
    assert needed == {
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "safetensors",
        "matplotlib",
        "captum",
    }
    assert not needed & SERVER_ONLY


def test_the_client_is_light_and_carries_the_contract_and_the_command(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    client = wheels["cnnviz_client"]
    assert top_level(client) == {"schemas", "cnnviz_client"}
    assert "schemas/jobs.py" in client.namelist()
    assert names(requires(client)) == {"httpx", "pydantic", "tqdm"}
    assert "cnnviz = cnnviz_client.cli:main" in entry_points(client)


def test_the_service_distribution_has_the_rest(wheels: dict[str, zipfile.ZipFile]) -> None:
    service = wheels["cnnviz_service"]
    assert top_level(service) == {"service", "workers"}  # the contract ships with the client
    files = service.namelist()
    assert "service/static/viewer/index.html" in files
    assert "workers/records/lua/finish.lua" in files  # the Redis records' scripts
    assert "cnnviz" not in entry_points(service)  # the command is the client's
    assert {"cnnviz", "cnnviz-client"} <= names(requires(service))
    server_extra = [r for r in requires(service) if 'extra == "server"' in r]
    assert any(r.startswith("fastapi") for r in server_extra)
    assert any(r.startswith("celery") for r in server_extra)
