"""The rest of the CAM family: Grad-CAM++, LayerCAM and Score-CAM.

Grad-CAM++ and LayerCAM weigh a layer's activations by its gradients, as Grad-CAM does; they
are written on captum's layer machinery (:class:`captum.attr.LayerAttribution` and its
``compute_layer_gradients_and_eval``), so captum's ``NoiseTunnel`` smooths them like any
captum method. Score-CAM needs no gradient: each channel's upsampled activation masks the
input, and the target's probability on the masked image weighs the channel; the masked images
of every channel run in batches, shared by all targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import nn

from cnnviz.attribution.base import (
    AttributionMethod,
    AttributionTask,
    Cost,
    LayerGradientMethod,
    MethodResult,
    register,
)
from cnnviz.axes import unit_maps
from cnnviz.layers import LayerInfo

__all__ = ["LayerCam", "LayerGradCamPlusPlus", "ScoreCam"]

# Input values per masked batch of Score-CAM (4 Mi floats: 16 MiB), at most 256 images.
_BATCH_VALUES = 1 << 22
_MAX_BATCH = 256


class _LayerCamBase(LayerAttribution, GradientAttribution):
    """A CAM from a layer's activations ``A`` and gradients ``G``, both ``(N, C, h, w)``."""

    def __init__(
        self,
        forward_func: Callable[..., torch.Tensor],
        layer: nn.Module,
        axes: LayerInfo | None = None,
    ) -> None:
        LayerAttribution.__init__(self, forward_func, layer)
        GradientAttribution.__init__(self, forward_func)
        self.axes = axes  # how the layer's units and grid are read (None: (N, C, h, w))

    def _cam(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @log_usage()
    def attribute(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        """The CAM ``(N, 1, h, w)`` of ``inputs`` ``(N, C, H, W)`` for ``target``."""
        (grads,), (acts,) = compute_layer_gradients_and_eval(
            self.forward_func, self.layer, inputs, target
        )
        if self.axes is not None:  # tokens and channels-last layers, unit-first
            acts, grads = unit_maps(acts, self.axes), unit_maps(grads, self.axes)
        return self._cam(acts, grads)


class LayerGradCamPlusPlus(_LayerCamBase):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential of the score):
    ``alpha = G² / (2 G² + sum_ab(A) G³)`` (0 where the denominator is 0),
    ``w_c = sum_ij alpha relu(G)``, map ``relu(sum_c w_c A_c)``."""

    def _cam(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        squared = grads**2
        denominator = 2 * squared + acts.sum(dim=(2, 3), keepdim=True) * grads**3
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, squared / safe, torch.zeros_like(squared))
        weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
        return F.relu((weights * acts).sum(dim=1, keepdim=True))


class LayerLayerCam(_LayerCamBase):
    """LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(G_c) ⊙ A_c)``, pixel by pixel."""

    def _cam(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return F.relu((F.relu(grads) * acts).sum(dim=1, keepdim=True))


def _upsampled(cam: torch.Tensor, task: AttributionTask) -> MethodResult:
    size = tuple(task.x.shape[2:])
    maps = LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")
    return MethodResult(maps[:, 0].detach().float())


class _GradientCam(LayerGradientMethod):
    explainer: type[_LayerCamBase]

    def attribute(self, task: AttributionTask) -> MethodResult:
        assert task.layer is not None  # checked by the caller (needs_layer)
        cam = task.smoothed(self.explainer(task.scores, task.layer, task.axes)).attribute(
            task.batch(), target=list(task.targets)
        )  # (T, 1, h, w)
        return _upsampled(cam, task)


@register
class GradCamPlusPlus(_GradientCam):
    """Grad-CAM++ at a layer, upsampled bilinearly to the input."""

    name = "gradcam_plus_plus"
    title = "Grad-CAM++"
    summary = "Grad-CAM++ at a layer: pixel-weighted gradients (better for several objects)"
    explainer = LayerGradCamPlusPlus


@register
class LayerCam(_GradientCam):
    """LayerCAM at a layer, upsampled bilinearly to the input."""

    name = "layercam"
    title = "LayerCAM"
    summary = "LayerCAM at a layer: activations times positive gradients, pixel by pixel"
    explainer = LayerLayerCam


@register
class ScoreCam(AttributionMethod):
    """Score-CAM (Wang et al. 2020): channel ``k``'s activation, upsampled bilinearly to the
    input and scaled to [0, 1], masks the (normalised) input; ``s_k`` is the target's softmax
    probability on the masked image; the map is ``relu(sum_k softmax_k(s)_k A_k)`` at the
    layer, upsampled. A constant channel masks with zeros."""

    name = "scorecam"
    title = "Score-CAM"
    needs_layer = True
    options = ("layer",)
    cost = Cost("1 + channels", lambda c: 1 + c.channels)
    summary = "Score-CAM at a layer: channels weighed by the score of the image they mask"

    def attribute(self, task: AttributionTask) -> MethodResult:
        assert task.layer is not None  # checked by the caller (needs_layer)
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            assert isinstance(output, torch.Tensor)
            captured.append(output.detach())

        handle = task.layer.register_forward_hook(keep)
        with torch.no_grad():
            try:
                task.scores(task.x)
            finally:
                handle.remove()
            acts = captured[-1].float()  # the layer's last call
            if task.axes is not None:
                acts = unit_maps(acts, task.axes)  # (1, units, h, w), whatever its axes
            size = tuple(task.x.shape[2:])
            masks = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)[0]
            low = masks.flatten(1).amin(dim=1).view(-1, 1, 1)
            high = masks.flatten(1).amax(dim=1).view(-1, 1, 1)
            span = high - low
            masks = torch.where(span > 0, (masks - low) / torch.where(span > 0, span, 1), 0)
            channels = masks.shape[0]
            batch = max(1, min(_MAX_BATCH, _BATCH_VALUES // task.x.numel()))
            targets = list(task.targets)
            probs = []
            for first in range(0, channels, batch):
                chunk = masks[first : first + batch].unsqueeze(1).to(task.x.dtype)
                scores = task.scores(task.x * chunk).float()  # (B, K)
                probs.append(torch.softmax(scores, dim=1)[:, targets])
            weights = torch.softmax(torch.cat(probs), dim=0)  # (C, T): over the channels
            cam = F.relu(torch.einsum("ct,chw->thw", weights, acts[0]))
        return _upsampled(cam.unsqueeze(1), task)
