"""From a decoded image to a model's input: the one place for resizing, colour and normalising."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnviz.errors import InvalidArgumentError

__all__ = ["Fit", "denormalize", "fit_box", "normalize", "preprocess", "to_tensor"]

Fit = Literal["crop", "stretch"]

# A model's per-channel mean or std: C floats, or a float32 tensor of them already on the
# inputs' device (a loop that normalises every step builds it once).
PerChannel = Sequence[float] | torch.Tensor

# Transparent pixels are shown over white, as a browser shows them on a blank page.
_BACKGROUND = (255, 255, 255)


def _flatten(image: Image.Image, channels: int) -> Image.Image:
    """``image`` in mode ``L`` (``channels == 1``) or ``RGB``, alpha composited over white."""
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and wider grey: scale the full range to 8 bits rather than clip at 255.
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode != "F" else max(float(values.max()), 1e-12)
        grey = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return grey.convert(target)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert(target)
    return image.convert(target)


def _resize(image: Image.Image, size: tuple[int, int], fit: Fit) -> Image.Image:
    height, width = size
    if image.size == (width, height):
        return image
    # Pillow's bilinear resize is antialiased when it shrinks, as torchvision's Resize is.
    if fit == "crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def fit_box(
    image_size: tuple[int, int], size: tuple[int, int], fit: Fit
) -> tuple[float, float, float, float]:
    """The part of an image of ``image_size`` ``(width, height)`` that :func:`preprocess`
    scales to ``size`` ``(height, width)``: ``(left, top, right, bottom)`` in the image's
    pixels, fractional. ``stretch`` takes all of it; ``crop`` the centred box of the model's
    aspect ratio (the box ``ImageOps.fit`` cuts)."""
    width, height = image_size
    if fit == "stretch" or (width, height) == (size[1], size[0]):
        return (0.0, 0.0, float(width), float(height))
    ratio = size[1] / size[0]
    if width / height >= ratio:
        box_width, box_height = ratio * height, float(height)
    else:
        box_width, box_height = float(width), width / ratio
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return (left, top, left + box_width, top + box_height)


def to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """``image`` as ``(channels, H, W) float32`` in ``[0, 1]``; ``channels`` is 1 or 3."""
    if channels not in (1, 3):
        raise InvalidArgumentError(f"channels must be 1 or 3, got {channels}")
    # np.array copies: torch.from_numpy needs a writable array.
    pixels = np.array(_flatten(image, channels), dtype=np.uint8)
    tensor = torch.from_numpy(pixels)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    return tensor.to(torch.float32).div_(255.0)


def preprocess(
    image: Image.Image,
    *,
    size: tuple[int, int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    fit: Fit = "crop",
) -> torch.Tensor:
    """A model's input batch of one: ``(1, channels, *size) float32``, normalised.

    ``size`` is ``(height, width)``. ``fit="crop"`` scales the shorter side to the size and
    cuts the centre, keeping the aspect ratio (torchvision's classification presets);
    ``"stretch"`` scales each side on its own. Colour becomes ``channels`` (1: luminance,
    3: RGB; alpha composited over white), then ``(x - mean) / std`` per channel.
    """
    if fit not in ("crop", "stretch"):
        raise InvalidArgumentError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    if len(mean) != channels or len(std) != channels:
        raise InvalidArgumentError(
            f"mean and std need {channels} values each, got {len(mean)} and {len(std)}"
        )
    x = to_tensor(_resize(_flatten(image, channels), size, fit), channels)
    return normalize(x, mean, std).unsqueeze(0)


def _per_channel(values: PerChannel, like: torch.Tensor) -> torch.Tensor:
    """``values`` as a float32 ``(C, 1, 1)`` tensor on ``like``'s device (no copy when it is
    one already)."""
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).view(-1, 1, 1)


def normalize(x: torch.Tensor, mean: PerChannel, std: PerChannel) -> torch.Tensor:
    """Pixels ``(..., C, H, W)`` in [0, 1] as a model's input: ``(x - mean) / std`` per
    channel, on ``x``'s device (float32 for float32 or narrower ``x``)."""
    return (x - _per_channel(mean, x)) / _per_channel(std, x)


def denormalize(x: torch.Tensor, mean: PerChannel, std: PerChannel) -> torch.Tensor:
    """A model's input ``(..., C, H, W)`` back to pixels: ``x * std + mean`` per channel, on
    ``x``'s device, not clamped (:meth:`cnnviz.models.ModelSpec.denormalize` clamps)."""
    return x * _per_channel(std, x) + _per_channel(mean, x)
