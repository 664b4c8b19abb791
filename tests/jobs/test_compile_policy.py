"""CNNVIZ_COMPILE: which jobs run compiled is decided at submit, recorded, and part of the
job's identity. Only the last test compiles, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cnnviz.models import ModelRegistry
from schemas.jobs import fingerprint
from schemas.optimization import OptimizationCreate
from workers.compile import CompilePolicy, parse_warmup
from workers.config import JobSettings
from workers.kinds import Resources
from workers.kinds.optimization import Optimization, optimize

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.from_file(None)


def test_warmup_pairs_are_read_and_a_bad_one_stops_the_process_at_start() -> None:
    assert parse_warmup(" r18:layer3, shapes:block2.relu ,") == (
        ("r18", "layer3"),
        ("shapes", "block2.relu"),
    )
    with pytest.raises(ValidationError, match="'layer3' is not model:layer"):
        JobSettings(compile_warmup="layer3")


def test_the_cache_is_under_the_data_directory_unless_set_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert JobSettings(data_dir=str(tmp_path)).compile_cache_path == tmp_path / "compile-cache"
    apart = tmp_path / "elsewhere"
    assert JobSettings(data_dir=str(tmp_path), compile_cache_dir=apart).compile_cache_path == apart
    monkeypatch.delenv("CNNVIZ_COMPILE")  # tests/conftest.py turns it off for the suite
    assert JobSettings().compile == "auto"


@pytest.fixture
def avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU seen as an AMD EPYC with ``avx512_bf16`` and no AMX: bf16, compiling pays."""
    flags = frozenset({"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr("cnnviz.precision.cpu_flags", lambda: flags)
    monkeypatch.setattr("cnnviz.precision.cpu_vendor", lambda: "AuthenticAMD")


def test_each_mode_decides_from_the_device_and_the_cache(
    registry: ModelRegistry, tmp_path: Path, avx512_bf16: None
) -> None:
    loaded = registry.get("shapes")  # on the CPU
    assert not CompilePolicy("off", tmp_path).decide(loaded, "block2.relu", "bf16")
    assert CompilePolicy("on", tmp_path).decide(loaded, "block2.relu", "fp32")
    auto = CompilePolicy("auto", tmp_path)
    # fp32 on a CPU: a compiled step measured no faster than eager; never compiled by auto.
    assert not auto.pays(loaded, "fp32")
    assert not auto.wants_background(loaded, "block2.relu", "fp32")
    # bf16 on a CPU pays: eager (compiling beside it) until the step is in the cache.
    assert not auto.decide(loaded, "block2.relu", "bf16")
    assert auto.wants_background(loaded, "block2.relu", "bf16")
    auto.mark_warm(loaded, "block2.relu", "bf16")
    assert auto.decide(loaded, "block2.relu", "bf16")
    assert not auto.wants_background(loaded, "block2.relu", "bf16")
    # Another layer, another precision or another process's cache: not warm.
    assert not auto.decide(loaded, "block3.relu", "bf16")
    assert not CompilePolicy("auto", tmp_path / "other").decide(loaded, "block2.relu", "bf16")


def test_auto_does_not_compile_beside_a_job_on_a_cpu_with_amx(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AMX tiles eager bf16 is oneDNN's AMX kernels, which a compiled step ran slower."""
    flags = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr("cnnviz.precision.cpu_flags", lambda: flags)
    loaded = registry.get("shapes")
    auto = CompilePolicy("auto", tmp_path)
    assert not auto.pays(loaded, "bf16")
    assert not auto.wants_background(loaded, "block2.relu", "bf16")
    # A step another process compiled (warm-up, or 'on') still runs compiled: the cache decides.
    auto.mark_warm(loaded, "block2.relu", "bf16")
    assert auto.decide(loaded, "block2.relu", "bf16")


def test_the_decision_is_written_into_the_request_and_its_identity(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    request = OptimizationCreate(layer="block2.relu", channels=[1], steps=4, precision="fp32")

    def prepared(mode: str, asked: OptimizationCreate = request) -> OptimizationCreate:
        resources = Resources(models=registry, compile=CompilePolicy(mode, tmp_path))  # type: ignore[arg-type]
        return Optimization().prepare(asked, "shapes", resources)

    assert prepared("on").compile is True
    assert prepared("off").compile is False
    assert prepared("auto").compile is False
    # A request that says it wins over the service's setting.
    assert prepared("on", request.model_copy(update={"compile": False})).compile is False
    on, off = prepared("on"), prepared("off")
    assert fingerprint("optimization", "shapes", on) != fingerprint("optimization", "shapes", off)


def test_an_eager_job_records_it_in_its_result(registry: ModelRegistry, tmp_path: Path) -> None:
    request = OptimizationCreate(
        layer="block2.relu", channels=[1], steps=3, precision="fp32", compile=False
    )
    result = optimize(request, registry.get("shapes"), policy=CompilePolicy("auto", tmp_path))
    assert result.settings["compile"] is False
    assert not list(tmp_path.iterdir()), "fp32 on a CPU: nothing compiled beside the job"


_AUTO_BESIDE_A_JOB = """
import json, sys, time
from pathlib import Path
import cnnviz.precision
from cnnviz.models import ModelRegistry
from schemas.optimization import OptimizationCreate
from workers.compile import CompilePolicy
from workers.kinds import Resources
from workers.kinds.optimization import Optimization, optimize

# A CPU with bf16 vector instructions and no AMX tiles: where 'auto' compiles beside a job.
cnnviz.precision.cpu_flags = lambda: frozenset({"avx512f", "avx512_bf16"})
registry = ModelRegistry.from_file(None)
loaded = registry.get("shapes")
policy = CompilePolicy("auto", Path(sys.argv[1]))
policy.setup()
asked = OptimizationCreate(layer="block2.relu", channels=[1], steps=3, image_size=32)
resources = Resources(models=registry, compile=policy)
first = Optimization().prepare(asked, "shapes", resources)
eager = optimize(first, loaded, policy=policy)
deadline = time.monotonic() + 600
while not policy.is_warm(loaded, "block2.relu", first.precision) and time.monotonic() < deadline:
    time.sleep(0.5)
second = Optimization().prepare(asked, "shapes", resources)
compiled = optimize(second, loaded, policy=policy)
print(json.dumps({
    "precision": [first.precision, eager.precision, compiled.precision],
    "first": [first.compile, eager.settings["compile"]],
    "warm": policy.is_warm(loaded, "block2.relu", first.precision),
    "second": [second.compile, compiled.settings["compile"]],
}))
"""


def test_auto_compiles_beside_an_eager_job_and_the_next_job_of_its_shapes_runs_compiled(
    tmp_path: Path,
) -> None:
    """The default mode end to end, on a CPU where it compiles (bf16 without AMX): the first
    job runs eagerly and compiles its step on a background thread, which marks the shapes
    warm; the next job of those shapes is decided compiled and runs so. In a process of its
    own: the suite's process runs with compiling off (tests/conftest.py)."""
    done = subprocess.run(
        [sys.executable, "-c", _AUTO_BESIDE_A_JOB, str(tmp_path / "cache")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CNNVIZ_COMPILE": "auto"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "precision": ["auto", "bf16", "bf16"],
        "first": [False, False],
        "warm": True,
        "second": [True, True],
    }
