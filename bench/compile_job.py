"""A whole optimization job compiled ÷ the same job eager, alternating in one process.

What ``CNNVIZ_COMPILE=auto`` has to decide per CPU kind: the job function the API and the
workers run (``workers.kinds.optimization.optimize``) on torchvision resnet18 (random
weights, from a models file), the same request with ``compile`` true and
false, precision ``auto``. The compiled side uses a cache directory (``--cache``, warmed by
an 18-step job first, so the compile itself is not in the rounds). Prints each round's wall
and CPU seconds, and the ratio of the medians and of the fastest rounds.

    .venv/bin/python -m bench.compile_job [--layer layer3] [--channels 8] [--steps 64]
        [--size 128] [--rounds 4] [--cache /tmp/cnnviz-compile-job]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine, models_file
from cnnviz.models import ModelRegistry
from schemas.optimization import OptimizationCreate
from workers.compile import CompilePolicy
from workers.kinds.optimization import optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cnnviz-compile-job"))
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        loaded = ModelRegistry.from_file(models_file(Path(tmp))).get("resnet18")
    policy = CompilePolicy("on", Path(args.cache))
    policy.setup()
    base = OptimizationCreate(
        layer=args.layer,
        channels=list(range(args.channels)),
        steps=args.steps,
        image_size=args.size,
        seed=1,
    )
    sides = {
        name: base.model_copy(update={"compile": name == "compiled"})
        for name in ("compiled", "eager")
    }
    for name, request in sides.items():  # warm-up: the compile (or its load), kernels
        start = time.perf_counter()
        optimize(request.model_copy(update={"steps": 18}), loaded, policy=policy)
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        line = f"  round {round_ + 1}:"
        for name, request in sides.items():
            start, used = time.perf_counter(), time.process_time()
            result = optimize(request, loaded, policy=policy)
            assert result.settings["compile"] is (name == "compiled")
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - used)
            line += f" {name} {wall[name][-1]:6.2f} s (CPU {cpu[name][-1]:.1f} s)"
        print(f"{line}; load average {os.getloadavg()[0]:.1f}", flush=True)
    # The fastest rounds too: on a shared machine, other work only ever adds time.
    for label, pick in (("median", statistics.median), ("fastest", min)):
        ratio = pick(wall["compiled"]) / pick(wall["eager"])
        ratio_cpu = pick(cpu["compiled"]) / pick(cpu["eager"])
        print(
            f"resnet18 {args.layer}, {args.channels} channels, {args.steps} steps, {args.size} px "
            f"at 224, precision auto: compiled ÷ eager {ratio:.2f}x (CPU time {ratio_cpu:.2f}x), "
            f"{label} of {args.rounds}"
        )


if __name__ == "__main__":
    main()
