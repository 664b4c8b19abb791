"""Saliency (Simonyan et al. 2013): the gradient of the target's score w.r.t. the pixels."""

from __future__ import annotations

from captum.attr import Saliency as CaptumSaliency

from cnnviz.attribution.base import AttributionMethod, AttributionTask, MethodResult, register


@register
class Saliency(AttributionMethod):
    """``max_c |dS/dx_c|`` per pixel."""

    name = "saliency"
    title = "saliency"
    smoothable = True
    local = True
    summary = "|gradient| of the target's score, max over colour channels"

    def attribute(self, task: AttributionTask) -> MethodResult:
        grads = task.smoothed(CaptumSaliency(task.scores)).attribute(
            task.batch(), target=list(task.targets), abs=True
        )  # (T, C, H, W)
        return MethodResult(grads.detach().amax(dim=1).float())
