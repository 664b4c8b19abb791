"""How far to believe a map: RISE's deletion and insertion curves (Petsiuk et al. 2018).

The protocol, exactly (``docs/attribution.md`` states it for others to reproduce):

- **The map ranked** is the raw map ``(H, W)`` or ``(C, H, W)`` at the model's input size, in
  fp32. A map with channels is ranked by the sum of ``|values|`` over them. Pixels are ranked
  by descending value (a signed map: most positive first); ties go to the lower flat index
  (a stable sort).
- **Deletion** replaces the ranked pixels (all channels of each) in ``steps`` chunks of
  ``ceil(H·W / steps)`` pixels, most important first, by 0 in the model's normalised input
  space (the normalisation's mean colour). Point ``k`` (``0..steps``) has the first
  ``min(k·chunk, H·W)`` ranked pixels replaced.
- **Insertion** starts from the input blurred by a Gaussian (kernel 11, sigma 5, the 2-D
  kernel the outer product of the normalised 1-D one, reflect padding) and puts the original
  pixels back in the same order.
- **Score** at each of the ``steps + 1`` points: the target's softmax probability over the
  model's outputs, fp32. **AUC**: the trapezoid rule with point ``k`` at ``x = k / steps``.
- **Random reference**: ``random_maps`` maps of uniform noise
  ``torch.rand((random_maps, H, W), generator=torch.Generator().manual_seed(seed))`` (CPU),
  ranked by the same rules; their AUCs averaged (per target: the images are shared).

Every perturbed image of every curve runs in batches of at most ``max_batch`` images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.attribution.core import OutputChoice, _choose
from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import preserved_state

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "METRICS",
    "Faithfulness",
    "blur",
    "faithfulness",
    "metric_images",
    "ranks",
]

METRICS = ("deletion", "insertion")
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
MAX_METRIC_STEPS = 1024
MAX_RANDOM_MAPS = 64
# Input values per perturbed batch (4 Mi floats: 16 MiB of input): 341 images of 64×64 RGB,
# 27 of 224×224; at most _MAX_BATCH images, where per-call overhead no longer matters.
_BATCH_VALUES = 1 << 22
_MAX_BATCH = 256


@dataclass(frozen=True)
class Faithfulness:
    """The curves of one target's map and the random reference's AUCs.

    ``deletion_curve``/``insertion_curve`` hold the ``steps + 1`` probabilities (None for a
    metric not asked for); the AUCs are over ``x`` in [0, 1]; ``random_*_auc`` are the mean
    AUCs of the random maps (None without random maps).
    """

    deletion_auc: float | None
    insertion_auc: float | None
    random_deletion_auc: float | None
    random_insertion_auc: float | None
    deletion_curve: tuple[float, ...] | None
    insertion_curve: tuple[float, ...] | None


def metric_images(metrics: Sequence[str], steps: int, random_maps: int, targets: int) -> int:
    """Images the metrics run through the model: ``steps + 1`` per curve, one curve per
    metric for each target's map and each random map (shared by every target)."""
    if not metrics:
        return 0
    return len(set(metrics)) * (steps + 1) * (targets + random_maps)


def ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank ``(M, H·W) int64`` (0: first replaced) for maps ``(M, H, W)`` or
    ``(M, C, H, W)`` (ranked by the sum of ``|values|`` over C): descending, stable."""
    values = maps.float()
    if values.dim() == 4:
        values = values.abs().sum(dim=1)
    flat = values.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def blur(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` blurred: Gaussian kernel 11, sigma 5, reflect padding."""
    half = BLUR_KERNEL // 2
    if min(x.shape[2:]) <= half:
        raise InvalidArgumentError(
            f"insertion blurs the input with an {BLUR_KERNEL}-pixel kernel and reflect padding, "
            f"which needs an input of at least {half + 1} pixels a side, got "
            f"{tuple(x.shape[2:])}; ask for deletion only"
        )
    offsets = torch.arange(BLUR_KERNEL, dtype=torch.float32, device=x.device) - half
    line = torch.exp(-(offsets**2) / (2 * BLUR_SIGMA**2))
    line = line / line.sum()
    channels = x.shape[1]
    kernel = torch.outer(line, line).expand(channels, 1, BLUR_KERNEL, BLUR_KERNEL)
    padded = F.pad(x.float(), (half, half, half, half), mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)


def _check(metrics: Sequence[str], steps: int, random_maps: int) -> list[str]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidArgumentError(
            f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}"
        )
    if not 1 <= steps <= MAX_METRIC_STEPS:
        raise InvalidArgumentError(f"metric_steps must be 1..{MAX_METRIC_STEPS}, got {steps}")
    if not 0 <= random_maps <= MAX_RANDOM_MAPS:
        raise InvalidArgumentError(f"random_maps must be 0..{MAX_RANDOM_MAPS}, got {random_maps}")
    return [m for m in METRICS if m in metrics]


def _auc(curves: torch.Tensor, steps: int) -> torch.Tensor:
    """Trapezoid AUC over the last axis, points at ``k / steps``."""
    return torch.trapezoid(curves, dx=1.0 / steps, dim=-1)


def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: Sequence[int],
    *,
    output: OutputChoice = None,
    metrics: Sequence[str] = METRICS,
    steps: int = 32,
    random_maps: int = 8,
    seed: int = 0,
    max_batch: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Faithfulness]:
    """The deletion/insertion curves of each target's map, with the random reference.

    ``model`` gives ``(N, K)`` class scores (K > 1) for ``(N, C, H, W)``, its ``output``
    chosen as :func:`cnnviz.attribution.attribute` chooses it; ``x`` is the image
    ``(1, C, H, W)`` normalised as the model expects; ``maps`` ``(T, H, W)`` or
    ``(T, C', H, W)``, one per entry of ``targets`` (class indices). ``on_batch(n)`` is called
    before each batch of ``n`` images (see :func:`metric_images` for the total): progress,
    and cancellation by raising. The model runs in eval mode, in fp32 (no autocast), and is
    left as it was found. Returns one :class:`Faithfulness` per target.
    """
    chosen = _check(metrics, steps, random_maps)
    if x.dim() != 4 or x.shape[0] != 1:
        raise InvalidArgumentError(f"x must be (1, C, H, W), got {tuple(x.shape)}")
    size = tuple(x.shape[2:])
    if maps.shape[0] != len(targets) or tuple(maps.shape[-2:]) != size:
        raise InvalidArgumentError(
            f"maps {tuple(maps.shape)} must be one per target ({len(targets)}) at the input "
            f"size {size}"
        )
    if not chosen:
        return []
    x = x.detach().float()
    device = x.device
    height, width = size
    pixels = height * width
    noise = torch.rand((random_maps, height, width), generator=torch.Generator().manual_seed(seed))
    order = torch.cat([ranks(maps.detach().to(device)), ranks(noise.to(device))])  # (M, P)
    chunk = math.ceil(pixels / steps)
    # Pixels replaced at each point k: (steps + 1,)
    replaced = (torch.arange(steps + 1, device=device) * chunk).clamp(max=pixels)
    batch = max_batch or max(1, min(_MAX_BATCH, _BATCH_VALUES // x.numel()))
    count = order.shape[0] * (steps + 1)
    starts = {
        "deletion": (x, torch.zeros_like(x)),  # (kept, fill): 0 is the mean after normalising
        "insertion": (blur(x) if "insertion" in chosen else x, x),
    }
    index = torch.tensor(list(targets), device=device)
    curves: dict[str, torch.Tensor] = {}  # metric -> (M, steps + 1, T)
    with preserved_state(model), torch.inference_mode():
        for metric in chosen:
            base, fill = starts[metric]
            probs = []
            for first in range(0, count, batch):
                rows = torch.arange(first, min(first + batch, count), device=device)
                mask = order[rows // (steps + 1)] < replaced[rows % (steps + 1)].unsqueeze(1)
                images = torch.where(mask.view(-1, 1, height, width), fill, base)
                if on_batch is not None:
                    on_batch(int(images.shape[0]))
                with torch.autocast(device.type, enabled=False):
                    out = _choose(model(images), output).float()
                if out.dim() != 2 or out.shape[1] < 2:
                    raise InvalidArgumentError(
                        f"faithfulness scores the target's softmax probability, and the model "
                        f"gives {tuple(out.shape[1:])} score(s) per image: with one output the "
                        "softmax is constant; omit 'metrics'"
                    )
                probs.append(torch.softmax(out, dim=1)[:, index])
            curves[metric] = torch.cat(probs).view(order.shape[0], steps + 1, len(targets))
    return _collect(curves, len(targets), random_maps, steps)


def _collect(
    curves: dict[str, torch.Tensor], targets: int, random_maps: int, steps: int
) -> list[Faithfulness]:
    found: list[dict[str, object]] = [{} for _ in range(targets)]
    for metric, values in curves.items():
        values = values.cpu()
        own = values[torch.arange(targets), :, torch.arange(targets)]  # (T, steps + 1)
        aucs = _auc(own, steps)
        reference = _auc(values[targets:].transpose(1, 2), steps).mean(dim=0)  # (T,)
        for t in range(targets):
            found[t][f"{metric}_curve"] = tuple(own[t].tolist())
            found[t][f"{metric}_auc"] = float(aucs[t])
            found[t][f"random_{metric}_auc"] = float(reference[t]) if random_maps else None
    fields = Faithfulness.__dataclass_fields__
    return [Faithfulness(**{f: item.get(f) for f in fields}) for item in found]  # type: ignore[arg-type]
