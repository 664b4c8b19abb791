"""Planted ground truth for dissection: coloured blobs with their masks, and a net that sees
each colour in one channel.

Image ``i`` is 32×32, black, with one square blob of side ``s`` (even, 6..12) at even
coordinates, at least 2 pixels from the border, coloured ``u`` in one of the red, green or
blue channels. Its mask marks the blob with the colour's concept (1, 2, 3).
``colour_net`` is a 1×1 convolution with weights 255 × identity, a ReLU and a 2×2 max-pool
(layer ``2``, 3×16×16): channel k is exactly the blob's 8-bit level (an integer: 255 ×
level / 255 is exact in float32) on its 2×2 cells where the blob is colour k, and 0 elsewhere.
Integers keep every bilinear value (3/4, 9/16 of a level) exact, so a hand count of the
pixels above T is exact too, ties included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

COLOURS = ["red", "green", "blue"]
SIZE = 32


@dataclass(frozen=True)
class Blob:
    colour: int  # 0..2
    top: int
    left: int
    side: int
    level: int  # 8-bit intensity


def colour_net() -> nn.Module:
    conv = nn.Conv2d(3, 3, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(255.0 * torch.eye(3).view(3, 3, 1, 1))
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))


def blobs(n: int, seed: int = 3) -> list[Blob]:
    rng = np.random.default_rng(seed)
    levels = rng.permutation(np.arange(128, 256))[:n] if n <= 128 else rng.integers(128, 256, n)
    out = []
    for i in range(n):
        side = int(rng.choice([6, 8, 10, 12]))
        top, left = (2 * int(v) for v in rng.integers(1, (SIZE - side) // 2, 2))
        out.append(Blob(i % 3, top, left, side, int(levels[i])))
    return out


def write_blobs(root: Path, masks: Path, items: list[Blob]) -> None:
    for i, blob in enumerate(items):
        pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        index = np.zeros((SIZE, SIZE), dtype=np.uint8)
        rows = slice(blob.top, blob.top + blob.side)
        cols = slice(blob.left, blob.left + blob.side)
        pixels[rows, cols, blob.colour] = blob.level
        index[rows, cols] = blob.colour + 1
        (root / "img").mkdir(parents=True, exist_ok=True)
        (masks / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i:04d}.png")
        Image.fromarray(index).save(masks / "img" / f"{i:04d}.png")
