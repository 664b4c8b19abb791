"""Occlusion (Zeiler and Fergus 2014): how much the score drops when a patch is covered."""

from __future__ import annotations

import torch
from captum.attr import Occlusion as CaptumOcclusion

from cnnviz.attribution.base import (
    AttributionMethod,
    AttributionTask,
    Cost,
    MethodResult,
    register,
)

# Input values per patched batch (16 Mi floats: 64 MiB): most of a sweep's cost is per
# forward call, so batches are as large as this bound allows (256 images of 64×64 RGB).
_BATCH_VALUES = 1 << 24
_MAX_PER_EVAL = 256


@register
class Occlusion(AttributionMethod):
    """A ``window``-pixel square of baseline slid by ``stride``; a pixel's value is the mean
    drop ``S(x) - S(x with the patch covered)`` over the patches that cover it.

    Every target is read from the same patched forward passes: one sweep for all of them.
    """

    name = "occlusion"
    title = "occlusion"
    options = ("window", "stride", "baseline")
    # Shared by every target; +1: the unoccluded image.
    cost = Cost("patches + 1", lambda c: c.patches + 1)
    signed = True
    summary = "score drop when a square patch is covered by the baseline (signed)"

    def attribute(self, task: AttributionTask) -> MethodResult:
        targets = list(task.targets)

        def all_targets(x: torch.Tensor) -> torch.Tensor:
            return task.scores(x)[:, targets]  # (N, T): captum attributes each column

        channels = task.x.shape[1]
        baseline = torch.zeros_like(task.x) if task.baseline is None else task.baseline
        drops = CaptumOcclusion(all_targets).attribute(
            task.x,
            sliding_window_shapes=(channels, task.window, task.window),
            strides=(channels, task.stride, task.stride),
            baselines=baseline,
            perturbations_per_eval=max(1, min(_MAX_PER_EVAL, _BATCH_VALUES // task.x.numel())),
        )  # (T, C, H, W); every channel of a patch gets the same drop
        return MethodResult(drops.detach().mean(dim=1).float())
