"""Grad-CAM (Selvaraju et al. 2017): a layer's channels weighted by their mean gradient."""

from __future__ import annotations

from captum.attr import LayerAttribution, LayerGradCam

from cnnviz.attribution.base import AttributionMethod, AttributionTask, MethodResult, register


@register
class GradCam(AttributionMethod):
    """``relu(sum_c mean(dS/dA_c) A_c)`` at the layer, upsampled bilinearly to the input."""

    name = "gradcam"
    title = "Grad-CAM"
    options = ("layer",)
    smoothable = True
    needs_layer = True
    local = True
    summary = "Grad-CAM at a layer (coarse: the layer's resolution, upsampled)"

    def attribute(self, task: AttributionTask) -> MethodResult:
        assert task.layer is not None  # checked by the caller (needs_layer)
        cam = task.smoothed(LayerGradCam(task.scores, task.layer)).attribute(
            task.batch(), target=list(task.targets), relu_attributions=True
        )  # (T, 1, h, w)
        size = tuple(task.x.shape[2:])
        maps = LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")
        return MethodResult(maps[:, 0].detach().float())
