"""Grad-CAM++, LayerCAM and Score-CAM against their papers' formulas, computed here one
channel and one pixel at a time on a hand-built net; and the noise tunnel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.attribution import Smooth, attribute, get_method, planned_passes
from cnnviz.errors import InvalidArgumentError
from tests.jobs.sanity_nets import Linear

SIZE = 6


class Net(nn.Module):
    """A 3×3 conv (hand-set kernels) → ReLU → 2×2 average pool (the layer, 3 × 3 × 3), then
    three class scores quadratic in the pooled activations: ``S_k = sum V_k ⊙ A²``, so the
    gradients vary from pixel to pixel and have both signs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        kernels = torch.tensor(
            [
                [[0.0, 0, 0], [0, 1, 0], [0, 0, 0]],  # the pixel
                [[0.0, 0, 0], [-1, 0, 1], [0, 0, 0]],  # a horizontal edge
                [[0.1, 0.1, 0.1], [0.1, 0.2, 0.1], [0.1, 0.1, 0.1]],  # a blur
            ]
        )
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.conv.weight.copy_(kernels.unsqueeze(1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.1, -0.05]))
        self.register_buffer("v", torch.randn((3, 3, 3, 3), generator=generator))

    def head(self, acts: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kchw,nchw->nk", self.v, acts**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x))))


def image() -> torch.Tensor:
    return torch.rand((1, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(5))


def layer_and_gradient(net: Net, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``dS_target/dA``, each ``(3, 3, 3)``, by autograd on the head alone."""
    with torch.no_grad():
        acts = net.pool(net.relu(net.conv(x)))[0]
    acts = acts.clone().requires_grad_()
    (grads,) = torch.autograd.grad(net.head(acts[None])[0, target], acts)
    return acts.detach(), grads


def upsample(cam: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear")[0, 0]


def gradcam_plus_plus_reference(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. 2018, eq. 19, pixel by pixel."""
    channels, height, width = acts.shape
    cam = torch.zeros(height, width)
    for k in range(channels):
        total = float(acts[k].sum())
        weight = 0.0
        for i in range(height):
            for j in range(width):
                g = float(grads[k, i, j])
                denominator = 2 * g**2 + total * g**3
                alpha = g**2 / denominator if denominator != 0 else 0.0
                weight += alpha * max(g, 0.0)
        cam += weight * acts[k]
    return upsample(cam.clamp(min=0))


def layercam_reference(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Jiang et al. 2021, eq. 5-6: each location weighed by its own positive gradient."""
    cam = torch.zeros(acts.shape[1:])
    for k in range(acts.shape[0]):
        cam += grads[k].clamp(min=0) * acts[k]
    return upsample(cam.clamp(min=0))


def scorecam_reference(net: Net, x: torch.Tensor, target: int) -> torch.Tensor:
    """Wang et al. 2020, Algorithm 1: one masked image per channel, its softmax score,
    a softmax over channels, the weighted activations."""
    with torch.no_grad():
        acts = net.pool(net.relu(net.conv(x)))[0]
        scores = []
        for k in range(acts.shape[0]):
            mask = upsample(acts[k])
            low, high = mask.min(), mask.max()
            mask = (mask - low) / (high - low) if high > low else torch.zeros_like(mask)
            scores.append(torch.softmax(net(x * mask), dim=1)[0, target])
        weights = torch.softmax(torch.stack(scores), dim=0)
        cam = sum(w * a for w, a in zip(weights, acts, strict=True))
    assert isinstance(cam, torch.Tensor)
    return upsample(cam.clamp(min=0))


@pytest.mark.parametrize("target", [0, 1, 2])
def test_gradcam_plus_plus_and_layercam_follow_their_papers(target: int) -> None:
    net, x = Net(), image()
    acts, grads = layer_and_gradient(net, x, target)
    assert (grads > 0).any() and (grads < 0).any()  # the formulas' cases are all exercised
    plus = attribute(net, x, "gradcam_plus_plus", targets=[target], layer="pool").maps[0]
    assert torch.allclose(plus, gradcam_plus_plus_reference(acts, grads), atol=1e-5)
    layer = attribute(net, x, "layercam", targets=[target], layer="pool").maps[0]
    assert torch.allclose(layer, layercam_reference(acts, grads), atol=1e-5)
    assert plus.abs().sum() > 0 or layer.abs().sum() > 0


def test_scorecam_follows_its_paper_for_every_target_in_one_batch() -> None:
    net, x = Net(), image()
    seen: list[int] = []
    result = attribute(net, x, "scorecam", targets=[0, 1, 2], layer="pool", on_batch=seen.append)
    for target in range(3):
        assert torch.allclose(result.maps[target], scorecam_reference(net, x, target), atol=1e-5)
    # The image (for the activations), then the 3 channels' masked images in one batch,
    # shared by the targets.
    assert seen == [1, 3]
    assert planned_passes("scorecam", (SIZE, SIZE), targets=3, channels=3) == 4


def test_the_noise_tunnel_is_seeded_and_exact_where_the_gradient_is_constant() -> None:
    linear, x = Linear(SIZE), image()
    weights = linear.fc.weight.detach()[1].view(SIZE, SIZE)
    smooth = Smooth("smoothgrad", samples=8, level=0.2, seed=1)
    found = attribute(linear, x, "saliency", targets=[1], smooth=smooth).maps[0]
    assert torch.allclose(found, weights.abs(), atol=1e-6)  # noise does not move the gradient
    squared = Smooth("smoothgrad_sq", samples=8, level=0.2)
    found = attribute(linear, x, "saliency", targets=[1], smooth=squared).maps[0]
    assert torch.allclose(found, weights**2, atol=1e-6)
    variance = Smooth("vargrad", samples=8, level=0.2)
    assert attribute(linear, x, "saliency", targets=[1], smooth=variance).maps.abs().max() < 1e-6
    # Where the gradient depends on the input, the seed decides the noise, and only it.
    net = Net()
    runs = [
        attribute(net, x, "layercam", targets=[0], layer="pool", smooth=Smooth(seed=s)).maps
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    plain = attribute(net, x, "layercam", targets=[0], layer="pool").maps
    assert not torch.equal(runs[0], plain)
    assert planned_passes("saliency", (SIZE, SIZE), targets=2, samples=8) == 16


def test_smoothing_is_refused_where_it_does_not_apply() -> None:
    net, x = Net(), image()
    with pytest.raises(InvalidArgumentError, match="not a gradient method"):
        attribute(net, x, "scorecam", layer="pool", smooth=Smooth())
    with pytest.raises(InvalidArgumentError, match="smoothgrad_sq"):
        attribute(net, x, "saliency", smooth=Smooth(type="smoothgrad_sqr"))
    assert get_method("scorecam").cost.formula == "1 + channels"
