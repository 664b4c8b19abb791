"""Integrated gradients (Sundararajan et al. 2017): gradients along the path from a baseline."""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from cnnviz.attribution.base import (
    AttributionMethod,
    AttributionTask,
    Cost,
    MethodResult,
    register,
)

# Images per forward/backward: bounds memory whatever the steps and targets.
_INTERNAL_BATCH = 64


@register
class IntegratedGradients(AttributionMethod):
    """``(x - x0) · mean_k dS/dx (x0 + k/steps (x - x0))``, summed over colour channels.

    Completeness: the attributions sum to ``S(x) - S(x0)``, up to the integral's error, which
    shrinks with ``steps`` (Gauss-Legendre); reported as the result's ``completeness``.
    """

    name = "integrated_gradients"
    title = "integrated gradients"
    options = ("steps", "baseline")
    smoothable = True
    cost = Cost("targets × steps", lambda c: c.targets * c.steps)
    signed = True
    summary = "integrated gradients from a baseline (signed; complete: sums to S(x) - S(x0))"

    def attribute(self, task: AttributionTask) -> MethodResult:
        batch = task.batch()
        baseline = torch.zeros_like(batch) if task.baseline is None else task.baseline
        baseline = baseline.expand_as(batch)
        explainer = CaptumIntegratedGradients(task.scores)
        settings = {
            "baselines": baseline,
            "target": list(task.targets),
            "n_steps": task.steps,
            "internal_batch_size": max(_INTERNAL_BATCH, len(task.targets)),
        }
        if task.smooth is not None:
            # Noisy inputs have their own S(x): the sum checks nothing, so none is reported.
            smoothed = task.smoothed(explainer).attribute(batch, **settings)
            return MethodResult(smoothed.detach().sum(dim=1).float())
        attributions, delta = explainer.attribute(
            batch, **settings, return_convergence_delta=True
        )  # (T, C, H, W), (T,)
        total = attributions.detach().flatten(1).sum(dim=1)
        expected = total - delta.detach()  # captum's delta is sum - (S(x) - S(x0))
        return MethodResult(
            attributions.detach().sum(dim=1).float(),
            torch.stack([total, expected], dim=1).float(),
        )
