"""Lucent itself, at the settings of bench/service_job.py, in its own virtual environment.

torch-lucent 0.1.8 is not installed beside cnnviz (it pins old kornia and tqdm); make a venv::

    python3 -m venv /tmp/lucent && /tmp/lucent/bin/pip install torch-lucent torchvision

then ``/tmp/lucent/bin/python bench/lucent_render.py --rounds 2`` prints the seconds of one
render of ``--channels`` channels of resnet18 ``--layer`` (``layer3``; random weights, batched
objective, 128 px Fourier image in decorrelated colour, Lucent's standard transforms, resized
to ``--input`` (224),
Adam 0.05, ``--steps`` steps), each round, and the median per channel. Imports nothing of
cnnviz. With ``--serve`` it speaks ``bench/lucid_floor.py``'s protocol instead (a JSON line
when ready, then one render per ``run`` or a 2-step one per ``warm`` read on stdin, each
answered by ``{"seconds": ...}``), so that ``bench/service_job.py --lucent PYTHON`` runs
Lucent beside the service's job, round by round, in one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import statistics
import sys
import time

import torch
import torchvision


def render_once(model: torch.nn.Module, args: argparse.Namespace, steps: int) -> float:
    from lucent.optvis import objectives, param, render

    objective = functools.reduce(
        operator.add, [objectives.channel(args.layer, c, batch=c) for c in range(args.channels)]
    )
    start = time.perf_counter()
    render.render_vis(
        model,
        objective,
        lambda: param.image(args.size, batch=args.channels),
        thresholds=(steps,),
        show_image=False,
        progress=False,
        fixed_image_size=args.input,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--input", type=int, default=224, help="side the model is fed")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="renders on request, from stdin")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    if args.serve:
        print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            if line.strip() not in ("run", "warm"):
                break
            steps = args.steps if line.strip() == "run" else 2
            seconds = render_once(model, args, steps)
            print(json.dumps({"seconds": seconds}), flush=True)
        return
    render_once(model, args, 2)  # warm-up
    times = [render_once(model, args, args.steps) for _ in range(args.rounds)]
    for i, t in enumerate(times):
        print(f"round {i + 1}: {t:.2f} s")
    print(f"lucent: {statistics.median(times) / args.channels:.3f} s per channel", flush=True)


if __name__ == "__main__":
    main()
