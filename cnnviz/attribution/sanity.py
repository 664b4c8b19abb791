"""Sanity checks for attribution maps: Adebayo et al.'s cascading randomization (NeurIPS 2018).

A map that explains the model must change when the model's learned weights are destroyed.
On a private copy of the model, the modules that hold parameters are re-initialised one more
at a time from the top (the output) down, each with its own ``reset_parameters()`` under a
seeded generator; at each stage every method's map of every image is compared with the
trained model's by the Spearman rank correlation of their absolute values, averaged over the
images. A method **passes** when the mean correlation after full randomization is below
:data:`PASS_BELOW` (0.5, fixed before looking at any outcome).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.attribution.core import OutputChoice, attribute
from cnnviz.errors import InvalidArgumentError

__all__ = ["PASS_BELOW", "SanityResult", "cascading_randomization", "randomizable", "spearman"]

PASS_BELOW = 0.5


@dataclass(frozen=True)
class SanityResult:
    """One method's check: ``correlations`` ``(module, mean Spearman)`` per stage, the
    stage's module being the last one re-initialised; ``passes`` as :data:`PASS_BELOW` says."""

    method: str
    correlations: tuple[tuple[str, float], ...]

    @property
    def passes(self) -> bool:
        return self.correlations[-1][1] < PASS_BELOW


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``(P,)`` float64 of ``values`` ``(P,)``, ties given their average rank."""
    unique, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, dim=0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based mean rank of each tie group
    del unique
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps (flattened), ties at their average rank; 0
    where either map is constant (a constant map shares no ranking with anything)."""
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / norm if norm > 0 else 0.0


def randomizable(model: nn.Module) -> list[str]:
    """The modules that hold parameters of their own and can re-initialise them, in the
    order ``named_modules`` gives (input first)."""
    return [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
        and callable(getattr(module, "reset_parameters", None))
    ]


def cascading_randomization(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    *,
    layer: str | None = None,
    output: OutputChoice = None,
    seed: int = 0,
    model_name: str = "model",
    on_stage: Callable[[int, int], None] | None = None,
) -> list[SanityResult]:
    """Cascading randomization of ``model`` for ``methods`` on ``images`` ``(N, C, H, W)``
    (normalised as the model expects). ``layer`` is the CAM methods' layer. Each image's
    target is the trained model's top prediction, the same at every stage. The model is not
    touched: a deep copy is randomized. ``on_stage(done, total)`` is called after each stage.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise InvalidArgumentError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    replica = copy.deepcopy(model)
    stages = list(reversed(randomizable(replica)))
    if not stages:
        raise InvalidArgumentError(
            f"model {model_name!r} has no module with parameters to re-initialise"
        )
    modules = dict(replica.named_modules())

    def maps(net: nn.Module, targets: list[int] | None) -> dict[str, list[torch.Tensor]]:
        found: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
        for i, x in enumerate(images):
            for method in methods:
                result = attribute(
                    net,
                    x,
                    method,
                    targets=None if targets is None else [targets[i]],
                    layer=layer,
                    output=output,
                    model_name=model_name,
                )
                found[method].append(result.maps[0].abs())
        return found

    tops = []
    for x in images:
        result = attribute(model, x, "saliency", layer=None, output=output, model_name=model_name)
        tops.append(result.targets[0].index)
    trained = maps(model, tops)
    correlations: dict[str, list[tuple[str, float]]] = {m: [] for m in methods}
    device = next(replica.parameters()).device
    for stage, name in enumerate(stages):
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed + stage)
            modules[name].reset_parameters()
        randomized = maps(replica, tops)
        for method in methods:
            pairs = zip(trained[method], randomized[method], strict=True)
            mean = sum(spearman(a, b) for a, b in pairs) / len(images)
            correlations[method].append((name, mean))
        if on_stage is not None:
            on_stage(stage + 1, len(stages))
    return [SanityResult(m, tuple(correlations[m])) for m in methods]
