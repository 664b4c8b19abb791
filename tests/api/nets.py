"""Tiny models for the API tests, registered as factories (``tests.api.nets:one_by_one``)."""

from __future__ import annotations

import threading

import torch
import torch.fx
from torch import nn

# The gated model's forward waits here; tests open the gate. ENTERED says a forward is waiting.
GATE = threading.Event()
ENTERED = threading.Event()


class OneByOne(nn.Module):
    """A 1×1 conv from grey to three channels, ``x``, ``1 - x`` and ``2x``, then a ReLU.

    With mean 0 and std 1 the input is the image's grey level in [0, 1], so every activation
    is a closed form of the pixels sent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def one_by_one() -> nn.Module:
    return OneByOne()


@torch.fx.wrap
def _wait_at_gate(x: torch.Tensor) -> torch.Tensor:
    # fx.wrap keeps this out of tracing: it runs only in real forward passes.
    ENTERED.set()
    if not GATE.wait(timeout=30):
        raise TimeoutError("the test never opened the gate")
    return x


class Gated(OneByOne):
    """OneByOne whose forward blocks until :data:`GATE` is set: holds a torch slot at will."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(_wait_at_gate(x)))


def gated() -> nn.Module:
    return Gated()


class CaffeNames(nn.Module):
    """Modules named as Caffe ports name them (``conv1_1``, ``conv1_2``), a ReLU used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1 = nn.Conv2d(1, 2, 1)
        self.conv1_2 = nn.Conv2d(2, 3, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv1_1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv1_1.bias.copy_(torch.tensor([0.0, 1.0]))
            weight = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
            self.conv1_2.weight.copy_(weight.view(3, 2, 1, 1))
            self.conv1_2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1_2(self.relu(self.conv1_1(x))))


def caffe_names() -> nn.Module:
    return CaffeNames()


class Heads(nn.Module):
    """A 1-channel net with three heads, as face detectors have: box (4), landmarks (10) and a
    probability (one per image)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.box = nn.Linear(4, 4)
        self.landmarks = nn.Linear(4, 10)
        self.prob = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.relu(self.conv(x)).mean(dim=(2, 3))
        return self.box(h), self.landmarks(h), torch.sigmoid(self.prob(h)).squeeze(1)


def heads() -> nn.Module:
    return Heads()


class Quadrant(nn.Module):
    """Two logits with a known answer: the first is the sum of the image's top-left quadrant
    over 4 (through a 2×2 average pool, a layer Grad-CAM can read), the second a constant.

    The ideal attribution of class 0 is that quadrant: no other pixel changes its score.
    """

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        mask = torch.zeros(1, 1, size // 2, size // 2)
        mask[..., : size // 4, : size // 4] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each pooled value is the mean of 2×2 pixels: their sum is the quadrant's sum / 4.
        first = (self.pool(x) * self.mask).sum(dim=(1, 2, 3))
        # 7/8 of a white quadrant: a white one is 88 % sure (sigmoid(2)), a blurred one 18 %.
        return torch.stack([first, torch.full_like(first, float(self.mask.sum()) * 0.875)], dim=1)


def quadrant() -> nn.Module:
    return Quadrant()
