"""PNG encoding with Pillow.

After the forward pass, PNG encoding is the largest cost of a feature-map grid, so the
defaults were measured (Pillow 13, zlib, one core; a 391×391 grid of 32 tiles of 64×64, and a
668×668 grid of 512 tiles of 28×28)::

    mode      level  391² grid        668² grid
    RGB       6      27.3 ms 165 KiB  59.9 ms 509 KiB   (Pillow's default level)
    RGB       1      12.4 ms 178 KiB  34.2 ms 547 KiB
    palette   6       7.2 ms  71 KiB  31.0 ms 215 KiB
    palette   1       2.4 ms  75 KiB   7.6 ms 226 KiB   <- used
    palette   0       0.2 ms 151 KiB   0.4 ms 437 KiB

A palette image is a third of the data of RGB, and level 1 costs about 5% in size for 3–4×
less time than level 6; level 0 doubles the bytes that base64 and the network then carry.
Heatmaps have at most 256 colours, so they are always written as palette PNGs.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cnnviz.errors import InvalidArgumentError

__all__ = ["DEFAULT_COMPRESS_LEVEL", "encode_png"]

DEFAULT_COMPRESS_LEVEL = 1


def _as_numpy(pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
    if array.dtype != np.uint8:
        raise InvalidArgumentError(f"PNG pixels must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array)


def encode_png(
    pixels: torch.Tensor | np.ndarray | Image.Image,
    *,
    palette: torch.Tensor | np.ndarray | None = None,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
) -> bytes:
    """PNG bytes of ``pixels``.

    ``pixels`` is ``(H, W) uint8`` (grey, or palette indices when ``palette`` is given),
    ``(H, W, 3) uint8`` RGB, or a Pillow image. ``palette`` is ``(K, 3) uint8``, ``K <= 256``.
    ``compress_level`` is zlib's 0 (none, fastest) to 9 (smallest, slowest).
    """
    if not 0 <= compress_level <= 9:
        raise InvalidArgumentError(f"compress_level must be 0..9, got {compress_level}")
    if isinstance(pixels, Image.Image):
        image = pixels
    else:
        array = _as_numpy(pixels)
        if array.ndim == 3 and array.shape[2] == 3 and palette is None:
            image = Image.fromarray(array, mode="RGB")
        elif array.ndim == 2:
            image = Image.fromarray(array, mode="L")
            if palette is not None:
                colours = _as_numpy(palette)
                if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256:
                    raise InvalidArgumentError(
                        f"a palette is (K, 3) uint8 with K <= 256, got {colours.shape}"
                    )
                image.putpalette(colours.tobytes())  # L becomes P
        else:
            raise InvalidArgumentError(
                f"PNG pixels are (H, W) or (H, W, 3), got {tuple(array.shape)}"
            )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
