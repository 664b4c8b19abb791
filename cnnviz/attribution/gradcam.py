"""Grad-CAM (Selvaraju et al. 2017): a layer's channels weighted by their mean gradient."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam

from cnnviz.attribution.base import AttributionTask, LayerGradientMethod, MethodResult, register
from cnnviz.axes import unit_maps
from cnnviz.errors import InvalidArgumentError

__all__ = ["GradCam", "layer_cam"]


def layer_cam(task: AttributionTask) -> torch.Tensor:
    """Grad-CAM ``(T, 1, h, w)`` at ``task.layer``, on the layer's grid, one per target.

    A ``CHW`` layer goes through captum's ``LayerGradCam``. Any other layer (tokens,
    channels-last) is read unit-first (:func:`cnnviz.axes.unit_maps`): its output and the
    gradient of each target's score with respect to it become ``(T, units, h, w)``, and the
    map is ``relu(sum_u mean_hw(dS/dA_u) A_u)`` over the token grid, prefix tokens left out.
    """
    assert task.layer is not None  # checked by the caller (needs_layer)
    axes = task.axes
    if axes is None or axes.axes == "CHW":
        return task.smoothed(LayerGradCam(task.scores, task.layer)).attribute(
            task.batch(), target=list(task.targets), relu_attributions=True
        )
    if task.smooth is not None:
        raise InvalidArgumentError(
            f"smoothing is not available for Grad-CAM on a {axes.axes} layer; ask without "
            "`smooth`, or at a convolutional (CHW) layer"
        )
    kept: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            kept[:] = [output]  # the module's last call, as captum's hook keeps

    handle = task.layer.register_forward_hook(hook)
    try:
        scores = task.scores(task.batch())  # (T, K)
    finally:
        handle.remove()
    (output,) = kept
    rows = torch.arange(len(task.targets), device=scores.device)
    chosen = scores[rows, torch.tensor(list(task.targets), device=scores.device)]
    (grad,) = torch.autograd.grad(chosen.sum(), output)
    activations = unit_maps(output, axes)  # (T, units, h, w)
    gradients = unit_maps(grad, axes)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1, keepdim=True))


@register
class GradCam(LayerGradientMethod):
    """``relu(sum_c mean(dS/dA_c) A_c)`` at the layer, upsampled bilinearly to the input."""

    name = "gradcam"
    title = "Grad-CAM"
    summary = "Grad-CAM at a layer (coarse: the layer's resolution, upsampled)"

    def attribute(self, task: AttributionTask) -> MethodResult:
        cam = layer_cam(task)  # (T, 1, h, w)
        size = tuple(task.x.shape[2:])
        maps = LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")
        return MethodResult(maps[:, 0].detach().float())
