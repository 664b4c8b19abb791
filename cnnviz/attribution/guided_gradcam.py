"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map."""

from __future__ import annotations

import warnings

from captum.attr import GuidedBackprop, LayerAttribution
from captum.attr import GuidedGradCam as CaptumGuidedGradCam

from cnnviz.attribution.base import AttributionTask, LayerGradientMethod, MethodResult, register
from cnnviz.attribution.gradcam import layer_cam


@register
class GuidedGradCam(LayerGradientMethod):
    """Fine-grained and class-discriminative; the map is ``max_c |attribution|``.

    Guided backpropagation overrides the gradient of ``nn.ReLU`` modules only (captum's
    rule): a model that calls ``torch.relu`` or uses other activations gets plain gradients
    there. A layer that is not ``CHW`` (tokens, channels-last) gets the same product, with
    its Grad-CAM read unit-first (:func:`cnnviz.attribution.gradcam.layer_cam`).
    """

    name = "guided_gradcam"
    title = "guided Grad-CAM"
    summary = "guided backpropagation times Grad-CAM (needs a layer)"

    def attribute(self, task: AttributionTask) -> MethodResult:
        assert task.layer is not None  # checked by the caller (needs_layer)
        with warnings.catch_warnings():
            # captum announces its ReLU hooks, which it removes before returning.
            warnings.filterwarnings("ignore", "Setting backward hooks on ReLU", UserWarning)
            if task.axes is None or task.axes.axes == "CHW":
                explainer = task.smoothed(CaptumGuidedGradCam(task.scores, task.layer))
                attributions = explainer.attribute(
                    task.batch(), target=list(task.targets), interpolate_mode="bilinear"
                )  # (T, C, H, W)
            else:  # captum's product, with the layer's Grad-CAM taken unit-first
                guided = GuidedBackprop(task.scores).attribute(
                    task.batch(), target=list(task.targets)
                )
                cam = LayerAttribution.interpolate(
                    layer_cam(task), tuple(task.x.shape[2:]), interpolate_mode="bilinear"
                )
                attributions = guided * cam
        return MethodResult(attributions.detach().abs().amax(dim=1).float())
