"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map."""

from __future__ import annotations

import warnings

from captum.attr import GuidedGradCam as CaptumGuidedGradCam

from cnnviz.attribution.base import AttributionMethod, AttributionTask, MethodResult, register


@register
class GuidedGradCam(AttributionMethod):
    """Fine-grained and class-discriminative; the map is ``max_c |attribution|``.

    Guided backpropagation overrides the gradient of ``nn.ReLU`` modules only (captum's
    rule): a model that calls ``torch.relu`` or uses other activations gets plain gradients
    there.
    """

    name = "guided_gradcam"
    title = "guided Grad-CAM"
    options = ("layer",)
    smoothable = True
    needs_layer = True
    local = True
    summary = "guided backpropagation times Grad-CAM (needs a layer)"

    def attribute(self, task: AttributionTask) -> MethodResult:
        assert task.layer is not None  # checked by the caller (needs_layer)
        with warnings.catch_warnings():
            # captum announces its ReLU hooks, which it removes before returning.
            warnings.filterwarnings("ignore", "Setting backward hooks on ReLU", UserWarning)
            explainer = task.smoothed(CaptumGuidedGradCam(task.scores, task.layer))
            attributions = explainer.attribute(
                task.batch(), target=list(task.targets), interpolate_mode="bilinear"
            )  # (T, C, H, W)
        return MethodResult(attributions.detach().abs().amax(dim=1).float())
