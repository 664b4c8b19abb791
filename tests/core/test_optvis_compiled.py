"""Compiled steps: within tolerance of eager, one graph for every chunk size, loaded by the
next process from the shared cache.

Slow: inductor compiles C++ kernels for the tiny net (about 30 s on a quiet 2-core machine,
minutes when it is busy); both tests share one compile through the module's cache dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.optvis import RenderSettings, objectives, precompile, visualize
from cnnviz.optvis.compiled import use_cache_dir

pytestmark = [
    pytest.mark.slow,
    # Dynamo reads .grad of the step's input (not a leaf) as it wraps it: its warning only.
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
INPUT = dict(input_shape=(3, 24, 24), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
SETTINGS = RenderSettings(
    steps=12, image_size=24, precision="fp32", redirect_relu_steps=2, memory_budget_mb=64
)
# fp32 compiled against eager: inductor reorders the pointwise sums around the convolutions.
RTOL, ATOL = 1e-3, 1e-4


class TinyNet(nn.Module):
    """conv → batch norm (folded by the step graph) → ReLU → max-pool → conv → ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        # Frozen, as the service loads models and precompile requires.
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.pool(self.relu(self.bn(self.conv1(x))))))


def objective() -> objectives.Objective:
    return objectives.channel("relu2", list(range(8)))


def test_precompile_refuses_weights_that_take_gradients() -> None:
    with pytest.raises(InvalidArgumentError, match="frozen weights"):
        precompile(TinyNet().requires_grad_(True), objective(), settings=SETTINGS, **INPUT)


def graphs_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def check_precompiled_render(cache_dir: str) -> None:
    """Precompile, then render compiled in chunks of 3, 3 and 2 images: no graph compiled
    again (the last, smaller chunk included), the same images as eager. Run in a process of
    its own: dynamo's counters are the process's, and a step graph that other renders of
    the process push out of the cache (jobs an earlier test left running) is built again."""
    import cnnviz.optvis.render as render

    use_cache_dir(cache_dir)
    render._chunk_size = lambda *a, **k: 3  # type: ignore[assignment]
    net = TinyNet().eval()
    eager = visualize(net, objective(), settings=SETTINGS, **INPUT)
    thread = precompile(net, objective(), settings=SETTINGS, **INPUT)
    assert thread is not None
    thread.join()
    before = graphs_compiled()
    compiled = visualize(net, objective(), settings=replace(SETTINGS, compile=True), **INPUT)
    assert compiled.n_chunks == 3
    assert compiled.compiled and not eager.compiled
    assert graphs_compiled() == before, "a render recompiled what precompile compiled"
    torch.testing.assert_close(
        torch.tensor(compiled.objectives), torch.tensor(eager.objectives), rtol=RTOL, atol=ATOL
    )
    torch.testing.assert_close(compiled.images, eager.images, rtol=RTOL, atol=ATOL)
    assert list(Path(cache_dir).iterdir()), "nothing written to the shared cache"


def test_compiled_render_matches_eager_with_one_graph_for_every_chunk(tmp_path: Path) -> None:
    _in_a_process(
        "from tests.core.test_optvis_compiled import check_precompiled_render as check\n"
        "check(sys.argv[1])",
        tmp_path,
    )


_SECOND_PROCESS = """
import json
from dataclasses import replace
import torch
from cnnviz.optvis import visualize
from cnnviz.optvis.compiled import use_cache_dir
from tests.core.test_optvis_compiled import INPUT, SETTINGS, TinyNet, objective
use_cache_dir(sys.argv[1])
visualize(TinyNet().eval(), objective(), settings=replace(SETTINGS, compile=True), **INPUT)
c = torch._dynamo.utils.counters
print(json.dumps({"hit": c["inductor"]["fxgraph_cache_hit"],
                  "miss": c["inductor"]["fxgraph_cache_miss"]}))
"""


def _compile_in_a_process(cache_dir: Path) -> dict[str, int]:
    """Run the compiled render in a fresh process on ``cache_dir``: its FX-graph cache counts.
    A process of its own each time: inductor fixes its cache directory at its first compile,
    which in this test process an earlier test may have made already."""
    out = _in_a_process(_SECOND_PROCESS, cache_dir)
    counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return counts


def _in_a_process(script: str, cache_dir: Path) -> str:
    """What ``script`` printed, run by a fresh interpreter with ``sys.argv[1]`` = ``cache_dir``;
    its error output in the failure when it fails."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + script, str(cache_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_a_second_process_loads_the_compiled_step(tmp_path: Path) -> None:
    first = _compile_in_a_process(tmp_path)
    assert first["miss"] >= 2, first  # it compiled the forward and the backward graph
    counts = _compile_in_a_process(tmp_path)
    assert counts["hit"] >= 2, counts  # and the next process loads both
    assert counts["miss"] == 0, counts
