"""bench/gpu.py's CPU fallback runs end to end in seconds, so the GPU script does not rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu import main


@pytest.mark.filterwarnings("ignore::UserWarning")  # DataLoader and decoding chatter
def test_the_cpu_fallback_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    data = main(["--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == data
    assert data["step"]["eager_s"] > 0 and data["step"]["gflop_per_step"] > 0
    assert data["step"]["chunk"] >= 1
    assert data["dataset"]["cpu_decode_pass"] > 0 and data["dataset"]["model_only"] > 0
    assert data["feature_maps"]["cnnviz_1_per_s"] > 0
    assert data["feature_maps"]["floor_8_per_s"] > 0
