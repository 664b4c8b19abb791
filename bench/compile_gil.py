"""What compiling a job's step on a background thread costs the feature-map requests beside it.

In one process, as the API runs in-process jobs: torchvision resnet18 (``weights=None``),
feature-map forwards (one image at 224 px to ``layer2``, fp32, inference mode), timed one
after another

1. alone, then
2. while :func:`cnnviz.optvis.precompile` compiles the optimization step of ``layer3`` on a
   background thread (a fresh cache directory: a cold compile).

Besides the forwards' medians, a pure-Python probe (``time.sleep(1 ms)`` in a loop) gives how
late a thread gets the interpreter lock back: that lateness is the lock's cost, the rest of a
forward's slowdown is the cores that the compile (and inductor's C++ compiler processes) take.

    .venv/bin/python -m bench.compile_gil [--requests 30] [--seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from bench.common import machine
from cnnviz.optvis import RenderSettings, objectives, precompile
from cnnviz.optvis.compiled import use_cache_dir

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def forwards(extractor: torch.nn.Module, n: int, until: float | None = None) -> list[float]:
    """Seconds of ``n`` forwards (fewer when ``until`` passes)."""
    x = torch.rand(1, 3, 224, 224)
    times = []
    for _ in range(n):
        if until is not None and time.monotonic() > until:
            break
        start = time.perf_counter()
        with torch.inference_mode():
            extractor(x)["layer2"].float()
        times.append(time.perf_counter() - start)
    return times


def lock_lateness(seconds: float) -> list[float]:
    """How much later than 1 ms a ``sleep(0.001)`` returns, for ``seconds``."""
    late = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - start - 0.001)
    return late


def report(name: str, fwd: list[float], late: list[float]) -> None:
    print(
        f"  {name:26s} forward median {statistics.median(fwd) * 1e3:7.1f} ms "
        f"(p90 {sorted(fwd)[int(0.9 * (len(fwd) - 1))] * 1e3:7.1f}, n={len(fwd)}); "
        f"lock lateness median {statistics.median(late) * 1e3:6.2f} ms, "
        f"p99 {sorted(late)[int(0.99 * (len(late) - 1))] * 1e3:6.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60, help="of forwards beside compiling")
    args = parser.parse_args()
    print(machine())
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)
    extractor = create_feature_extractor(model, ["layer2"])
    forwards(extractor, 3)  # warm-up
    alone = forwards(extractor, args.requests)
    alone_late = lock_lateness(3.0)
    print("resnet18 feature maps (layer2, 1 image, fp32), alone and beside a cold compile")
    report("alone", alone, alone_late)
    with tempfile.TemporaryDirectory() as cache:
        use_cache_dir(cache)
        started = time.monotonic()
        thread = precompile(
            model,
            objectives.channel("layer3", [0]),
            input_shape=(3, 224, 224),
            mean=MEAN,
            std=STD,
            settings=RenderSettings(image_size=128, steps=64),
        )
        assert thread is not None
        until = started + args.seconds
        beside = forwards(extractor, 10**6, until=until)
        beside_late = lock_lateness(3.0) if thread.is_alive() else []
        thread.join()
        compile_s = time.monotonic() - started
    print(
        f"resnet18 feature maps (layer2, 1 image, fp32) beside a cold compile ({compile_s:.0f} s)"
    )
    report("alone", alone, alone_late)
    report("beside the compile", beside, beside_late or [0.0])
    print(f"  ratio of medians {statistics.median(beside) / statistics.median(alone):5.2f}")


if __name__ == "__main__":
    main()
