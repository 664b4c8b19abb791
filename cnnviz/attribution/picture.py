"""An attribution map as pictures: on its own (a heatmap) and over the input it explains."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.heatmap import apply_palette, palette, quantize
from cnnviz.imaging.png import DEFAULT_COMPRESS_LEVEL, encode_png

__all__ = ["MapPicture", "MapStats", "map_picture", "map_stats"]

# Signed maps on a diverging colormap, zero in the middle; unsigned from zero up.
SIGNED_COLORMAP = "coolwarm"
UNSIGNED_COLORMAP = "turbo"


@dataclass(frozen=True)
class MapStats:
    """Numbers of one map ``(H, W)``: its range, mean, sum, and the ``(y, x)`` of its peak."""

    min: float
    max: float
    mean: float
    sum: float
    peak: tuple[int, int]


@dataclass(frozen=True)
class MapPicture:
    """The map's heatmap and its overlay on the input, as PNG bytes, and its stats."""

    heatmap: bytes
    overlay: bytes
    stats: MapStats


def map_stats(attribution: torch.Tensor) -> MapStats:
    """The :class:`MapStats` of ``attribution`` ``(H, W)``; the peak is the largest value."""
    flat = attribution.flatten()
    y, x = divmod(int(flat.argmax()), attribution.shape[1])
    return MapStats(
        min=float(flat.min()),
        max=float(flat.max()),
        mean=float(flat.mean()),
        sum=float(flat.sum()),
        peak=(y, x),
    )


def map_picture(
    attribution: torch.Tensor,
    image: torch.Tensor,
    *,
    signed: bool,
    colormap: str | None = None,
    opacity: float = 0.5,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
) -> MapPicture:
    """The pictures of ``attribution`` ``(H, W)`` for ``image`` ``(C, H, W)`` float in [0, 1].

    Signed maps run from ``-m`` to ``m`` (``m`` the largest ``|value|``) on ``colormap``
    (default ``coolwarm``: zero in the middle); unsigned ones from 0 to their maximum (default
    ``turbo``). The overlay is ``(1 - opacity) · image + opacity · heatmap``, RGB.
    """
    if not 0.0 <= opacity <= 1.0:
        raise InvalidArgumentError(f"opacity must be in [0, 1], got {opacity}")
    if image.shape[1:] != attribution.shape:
        raise InvalidArgumentError(
            f"the map {tuple(attribution.shape)} and the image {tuple(image.shape)} differ in size"
        )
    colours = palette(colormap or (SIGNED_COLORMAP if signed else UNSIGNED_COLORMAP))
    values = attribution.float().cpu()
    extent = values.abs().amax() if signed else values.clamp(min=0).amax()
    hi = extent.view(1)
    lo = -hi if signed else torch.zeros(1)
    indices = quantize(values[None], lo, hi)[0]  # (H, W) uint8
    heat = apply_palette(indices, colours).float()  # (H, W, 3) in 0..255
    rgb = image.float().cpu().clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0) * 255
    # A uniform blend: sparse pixel maps (saliency) stay visible, unlike a magnitude-weighted one.
    blend = ((1 - opacity) * rgb + opacity * heat).round().to(torch.uint8)
    return MapPicture(
        heatmap=encode_png(indices, palette=colours, compress_level=compress_level),
        overlay=encode_png(blend, compress_level=compress_level),
        stats=map_stats(values),
    )
