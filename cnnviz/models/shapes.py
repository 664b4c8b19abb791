"""``ShapesNet``, the embedded default model, and the loader of its committed weights.

A small VGG-style CNN trained on :mod:`cnnviz.data.shapes` by ``scripts/train_shapes.py``.
Every module has a readable dotted name (``block1.conv``, ..., ``pool``, ``fc``) so that layer
names in the API read well, and the forward pass has no data-dependent control flow so that
``torch.fx`` can trace it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from cnnviz.data.shapes import CLASSES

__all__ = [
    "INPUT_SIZE",
    "MEAN",
    "STD",
    "WEIGHTS_PATH",
    "ShapesNet",
    "build_shapes_net",
    "load_shapes_net",
]

# Normalisation applied to inputs in [0, 1] during training: ``(x - MEAN) / STD``. The data
# set's colours are uniform in [0, 1], so its per-channel mean is 0.5 and std close to 0.3.
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.3, 0.3, 0.3)
INPUT_SIZE: tuple[int, int] = (64, 64)
WEIGHTS_PATH: Path = Path(__file__).parent / "weights" / "shapes.safetensors"

# Kept small on purpose: 1,000 forwards at 64×64 take about 1 s on two idle CPU cores, and
# training from scratch takes minutes. Four blocks and three 2×2 pools give a receptive field
# of 31 px, about half the image, before the global average pool.
_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


class ConvBlock(nn.Sequential):
    """conv3×3 → BatchNorm → ReLU, then 2×2 max-pool if ``pool``; named ``conv, bn, relu, pool``."""

    def __init__(self, in_channels: int, out_channels: int, *, pool: bool) -> None:
        super().__init__()
        # No conv bias: the BatchNorm that follows has its own shift.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        # Not in place, so that captured activations are never overwritten afterwards.
        self.relu = nn.ReLU(inplace=False)
        if pool:
            self.pool = nn.MaxPool2d(kernel_size=2)


class ShapesNet(nn.Module):
    """Classifies ``(N, 3, 64, 64) float32`` normalised images into ``len(CLASSES)`` logits.

    Layers: ``block1`` .. ``block4`` (each ``conv, bn, relu`` and, for the first three,
    ``pool``), then ``pool`` (global average), ``flatten`` and ``fc``. Any input size of at
    least 8×8 works; the model was trained at :data:`INPUT_SIZE`.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = _WIDTHS) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ShapesNet has 4 blocks; got {len(widths)} widths {widths}")
        w1, w2, w3, w4 = widths
        self.block1 = ConvBlock(3, w1, pool=True)
        self.block2 = ConvBlock(w1, w2, pool=True)
        self.block3 = ConvBlock(w2, w3, pool=True)
        self.block4 = ConvBlock(w3, w4, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w4, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) float32`` normalised → ``(N, widths[-1])``: ``fc``'s input."""
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.flatten(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) float32`` normalised → ``(N, num_classes) float32`` logits."""
        return self.fc(self.features(x))


def build_shapes_net() -> ShapesNet:
    """A randomly initialised :class:`ShapesNet` for :data:`~cnnviz.data.shapes.CLASSES`."""
    return ShapesNet()


def load_shapes_net(path: Path = WEIGHTS_PATH) -> ShapesNet:
    """The trained :class:`ShapesNet` from a safetensors file, strictly, in eval mode, on CPU."""
    model = build_shapes_net()
    model.load_state_dict(load_file(path, device="cpu"), strict=True)
    return model.eval()
