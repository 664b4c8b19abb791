"""Faithfulness metrics: what ``cnnviz.attribution.faithfulness`` costs over a plain loop.

Two sides, alternated round by round so that both see the same machine, on the same device
with the same batch size:

- **floor**: plain batched fp32 forwards and a softmax over exactly the perturbed images the
  metrics run, built beforehand by a loop written here (a boolean mask of the ranked pixels
  and one ``torch.where`` per image; the blur by torchvision; ranking by a stable ``sort``)
  and not timed: the floor is the forwards alone;
- **core**: ``faithfulness(model, x, maps, targets)`` with the default metrics (deletion
  and insertion, 32 steps, 8 random maps), everything included (ranking, images, blur).

Both compute the same AUCs (checked each run). Prints the p50 of each and their ratio.

    .venv/bin/python -m bench.attribution_metrics [--rounds 10] [--models shapes,resnet18]
        [--device cpu|cuda] [--targets 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torchvision.transforms.functional as TF

from bench.common import machine, models_file, ms, p50
from cnnviz.attribution import Faithfulness, attribute, faithfulness
from cnnviz.attribution.faithfulness import _BATCH_VALUES, _MAX_BATCH
from cnnviz.data.shapes import sample_image
from cnnviz.models import ModelRegistry

CASES = {"shapes": "block4.relu", "resnet18": "layer4"}
STEPS, RANDOM_MAPS, SEED = 32, 8, 0
T = TypeVar("T")


def plain_images(x: torch.Tensor, maps: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Every perturbed image of both metrics, as batches ``(B, C, H, W)`` in curve order
    (deletion, then insertion; maps, then random maps; points 0..STEPS)."""
    _, _, height, width = x.shape
    pixels = height * width
    noise = torch.rand((RANDOM_MAPS, height, width), generator=torch.Generator().manual_seed(SEED))
    every = torch.cat([maps.to(x.device), noise.to(x.device)]).flatten(1)
    orders = torch.sort(every, dim=1, descending=True, stable=True).indices  # (M, P)
    chunk = math.ceil(pixels / STEPS)
    blurred = TF.gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])
    rows = [(m, k) for m in range(orders.shape[0]) for k in range(STEPS + 1)]
    batches = []
    for start, fill in ((x, torch.zeros_like(x)), (blurred, x)):
        for first in range(0, len(rows), batch):
            images = []
            for m, k in rows[first : first + batch]:
                # A boolean mask, not index_put on the pixel axis (25× slower on CPU).
                replaced = torch.zeros(pixels, dtype=torch.bool, device=x.device)
                replaced[orders[m, : min(k * chunk, pixels)]] = True
                images.append(torch.where(replaced.view(height, width), fill[0], start[0]))
            batches.append(torch.stack(images))
    return batches


def plain_forwards(
    model: torch.nn.Module, batches: list[torch.Tensor], targets: list[int]
) -> torch.Tensor:
    """The floor: one plain fp32 forward per batch and a softmax, ``(images, T)``."""
    probs = []
    with torch.inference_mode():
        for images in batches:
            probs.append(torch.softmax(model(images).float(), dim=1)[:, targets])
    return torch.cat(probs)


def plain_aucs(probs: torch.Tensor, targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion AUCs ``(2, T)`` and the random reference ``(2, T)``."""
    curves = probs.cpu().view(2, targets + RANDOM_MAPS, STEPS + 1, targets)
    aucs = torch.trapezoid(curves, dx=1.0 / STEPS, dim=2)  # (2, M, T)
    own = aucs[:, torch.arange(targets), torch.arange(targets)]
    return own, aucs[:, targets:].mean(dim=1)


def run_core(
    model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: list[int], batch: int
) -> list[Faithfulness]:
    return faithfulness(model, x, maps, targets, max_batch=batch)


def timed(
    sync: Callable[[], None], run: Callable[..., T], case: tuple[Any, ...]
) -> tuple[float, T]:
    sync()
    start = time.perf_counter()
    found = run(*case)
    sync()
    return time.perf_counter() - start, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default="shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--targets", type=int, default=1)
    args = parser.parse_args()
    print(machine(), "| device", args.device)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry.from_file(models_file(Path(tmp)))
        for name in args.models.split(","):
            loaded = registry.get(name)
            spec = loaded.spec
            model = loaded.module.to(device)
            x = spec.preprocess(sample_image("star")).to(device)
            top = model(x).argsort(dim=1, descending=True)[0, : args.targets].tolist()
            maps = attribute(model, x, "gradcam", targets=top, layer=CASES[name]).maps
            batch = max(1, min(_MAX_BATCH, _BATCH_VALUES // x.numel()))
            floor: list[float] = []
            core: list[float] = []
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            case = (model, x, maps, top, batch)
            start = time.perf_counter()
            batches = plain_images(x, maps, batch)
            t_build = time.perf_counter() - start
            for round_ in range(args.rounds + 1):  # one round of warm-up
                # Alternate which side goes first: neither always meets a warm cache.
                if round_ % 2:
                    t_core, found = timed(sync, run_core, case)
                    t_floor, probs = timed(sync, plain_forwards, (model, batches, top))
                else:
                    t_floor, probs = timed(sync, plain_forwards, (model, batches, top))
                    t_core, found = timed(sync, run_core, case)
                own, reference = plain_aucs(probs, len(top))
                for t, scores in enumerate(found):
                    assert abs(scores.deletion_auc - float(own[0, t])) < 1e-4  # type: ignore[operator]
                    assert abs(scores.insertion_auc - float(own[1, t])) < 1e-4  # type: ignore[operator]
                    assert abs(scores.random_deletion_auc - float(reference[0, t])) < 1e-4  # type: ignore[operator]
                if round_ >= 1:
                    floor.append(t_floor)
                    core.append(t_core)
            images = 2 * (STEPS + 1) * (args.targets + RANDOM_MAPS)
            f, c = p50(floor), p50(core)
            print(
                f"{name} at {spec.input_size[0]} px, {args.targets} target(s), {images} images "
                f"in batches of {batch}, p50 of {args.rounds}: floor (forwards) {ms(f)}, core "
                f"(everything) {ms(c)} ({c / f:.2f}x); the floor's images built by hand, once, "
                f"untimed above: {ms(t_build)}"
            )


if __name__ == "__main__":
    main()
