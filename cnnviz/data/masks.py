"""Pixel-level concept masks: reading them, checking them, and fitting them to a model's input.

A mask is a single-channel 8-bit image (mode ``L``, or ``P`` read as palette *indices*, never
as the palette's colours) of the same size as its image. Pixel value ``i`` (1..K) marks the
concept ``concepts[i - 1]``; 0 marks none. A mask that breaks any of this is
:class:`InvalidMaskError`, which a data-set pass counts and skips (the image itself is still
used); it is never a job's failure.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.preprocess import Fit

__all__ = ["MAX_CONCEPTS", "InvalidMaskError", "decode_mask", "fit_mask"]

MAX_CONCEPTS = 255  # pixel values 1..255 in an 8-bit mask


class InvalidMaskError(InvalidArgumentError):
    """A concept mask that is missing, corrupt, of another size than its image, or that holds
    a value over the number of concepts."""

    code = "invalid_mask"


def decode_mask(data: bytes, concepts: int, *, max_pixels: int) -> np.ndarray:
    """The mask in ``data`` as ``(H, W) uint8`` concept indices (0: none, 1..``concepts``).

    Modes ``L`` and ``P`` only; a ``P`` image gives its indices. InvalidMaskError otherwise,
    or when a value is over ``concepts``, or when it has more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise InvalidMaskError(
                    f"mask of {image.width}×{image.height} pixels is over the cap of {max_pixels}"
                )
            if image.mode not in ("L", "P"):
                raise InvalidMaskError(
                    f"mask mode {image.mode!r} is not a single-channel 8-bit image (L or P)"
                )
            # np.asarray of a P image is its indices; no convert(), which would map colours.
            values = np.array(image, dtype=np.uint8)
    except InvalidMaskError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidMaskError(f"mask cannot be decoded: {exc}") from exc
    peak = int(values.max()) if values.size else 0
    if peak > concepts:
        raise InvalidMaskError(f"mask holds value {peak}, over the {concepts} concepts")
    return values


def fit_mask(mask: np.ndarray, size: tuple[int, int], fit: Fit = "crop") -> torch.Tensor:
    """``mask (H, W) uint8`` given the resize and crop its image gets in
    :func:`cnnviz.imaging.preprocess.preprocess`, with nearest-neighbour sampling so that no
    concept index is ever blended: ``(height, width) uint8`` of ``size``."""
    height, width = size
    image = Image.fromarray(mask)
    if image.size != (width, height):
        if fit == "crop":
            image = ImageOps.fit(image, (width, height), method=Image.Resampling.NEAREST)
        else:
            image = image.resize((width, height), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(image, dtype=np.uint8))
