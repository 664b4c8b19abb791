"""What ``torch.compile`` would bring: compile time, then per-call time against eager.

Two calls, on torchvision resnet18 (``weights=None``) cut at a layer by
``create_feature_extractor``, with torch's default threads:

1. the optimization-job step: forward and backward to ``layer3`` for a batch of 4 images at
   224 px, under the job's precision ``auto`` (bf16 autocast and channels-last on a CPU with
   native bf16), gradient to the input only;
2. the synchronous forward: one image at 224 px to ``layer2``, fp32 (feature maps' default),
   in inference mode.

For each: the seconds of the first compiled call (compilation included), then medians of
``--rounds`` eager and compiled calls alternating, and the calls it takes for compiling to pay
(compile time ÷ time saved a call). Compiled graphs are cached per process only: every new
process (a Celery pool child, an API restart) and every new model, layer set, batch size or
precision pays the compile time again.

    .venv/bin/python -m bench.compile [--rounds 20] [--calls step,forward] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from bench.common import machine
from cnnviz.precision import resolve_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def job_step(
    module: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    x: torch.Tensor,
    device: torch.device,
) -> Callable[[], None]:
    numerics = resolve_precision("auto", device)

    def step() -> None:
        image = x.clone().requires_grad_(True)
        with numerics.autocast():
            act = module(numerics.prepare(image))["layer3"].float()
        act[:, 0].mean().backward()
        _sync(device)

    return step


def sync_forward(
    module: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    x: torch.Tensor,
    device: torch.device,
) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            module(x)["layer2"].float()
        _sync(device)

    return forward


def timed(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(
    name: str,
    make: Callable[..., Callable[[], None]],
    extractor: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    rounds: int,
) -> None:
    eager = make(extractor, x, device)
    compiled = make(torch.compile(extractor), x, device)
    eager()  # warm-up
    first = timed(compiled)  # compilation (forward and, for the step, backward graphs)
    compiled()
    pairs = [(timed(eager), timed(compiled)) for _ in range(rounds)]
    e = statistics.median(p[0] for p in pairs)
    c = statistics.median(p[1] for p in pairs)
    pays = f"after {first / (e - c):.0f} calls" if e > c else "never"
    print(f"{name}")
    print(f"  first compiled call {first:7.1f} s (compiling)")
    print(f"  eager {e * 1e3:8.1f} ms, compiled {c * 1e3:8.1f} ms: ratio {c / e:5.2f}")
    print(f"  compiling pays {pays}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", default="step,forward", help="which: step, forward or both")
    args = parser.parse_args()
    calls = args.calls.split(",")
    device = torch.device(args.device)
    print(machine())
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    for weight in model.parameters():
        weight.requires_grad_(False)
    numerics = resolve_precision("auto", device)
    if "step" in calls:
        measure(
            f"job step: resnet18 to layer3, 4 images at 224 px, forward + backward, "
            f"precision auto ({numerics.precision}, channels-last {numerics.channels_last})",
            job_step,
            create_feature_extractor(model, ["layer3"]),
            torch.rand(4, 3, 224, 224, device=device),
            device,
            args.rounds,
        )
    if "forward" in calls:
        measure(
            "synchronous forward: resnet18 to layer2, 1 image at 224 px, fp32, inference mode",
            sync_forward,
            create_feature_extractor(model, ["layer2"]),
            torch.rand(1, 3, 224, 224, device=device),
            device,
            args.rounds,
        )


if __name__ == "__main__":
    main()
