"""An attribution map as pictures: on its own (a heatmap) and over the input it explains."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.heatmap import apply_palette, palette, quantize
from cnnviz.imaging.png import DEFAULT_COMPRESS_LEVEL, encode_png

__all__ = ["MapPicture", "MapStats", "map_picture", "map_stats", "overlay_full"]

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
    indices, colours, heat = _heat(attribution.float().cpu(), signed, colormap)
    rgb = image.float().cpu().clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0) * 255
    # A uniform blend: sparse pixel maps (saliency) stay visible, unlike a magnitude-weighted one.
    blend = ((1 - opacity) * rgb + opacity * heat).round().to(torch.uint8)
    return MapPicture(
        heatmap=encode_png(indices, palette=colours, compress_level=compress_level),
        overlay=encode_png(blend, compress_level=compress_level),
        stats=map_stats(attribution.float().cpu()),
    )


def _heat(
    values: torch.Tensor, signed: bool, colormap: str | None, extent: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Palette indices ``(H, W) uint8``, the palette, and the colours ``(H, W, 3)`` float in
    0..255 of ``values`` ``(H, W)``; ``extent`` (default: the map's own) is the top value."""
    colours = palette(colormap or (SIGNED_COLORMAP if signed else UNSIGNED_COLORMAP))
    if extent is None:
        extent = values.abs().amax() if signed else values.clamp(min=0).amax()
    hi = extent.view(1)
    lo = -hi if signed else torch.zeros(1)
    indices = quantize(values[None], lo, hi)[0]
    return indices, colours, apply_palette(indices, colours).float()


def overlay_full(
    attribution: torch.Tensor,
    image: torch.Tensor,
    box: tuple[float, float, float, float],
    *,
    signed: bool,
    colormap: str | None = None,
    opacity: float = 0.5,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
) -> bytes:
    """The map ``(h, w)`` over the uploaded ``image`` ``(C, H, W)`` in [0, 1] at its own size,
    a PNG. ``box`` ``(left, top, right, bottom)`` is the part of the image the model saw
    (:func:`cnnviz.imaging.preprocess.fit_box`): the map is resampled bilinearly onto it; the
    margins outside it (``fit=crop``) are the image alone. Colours as :func:`map_picture`."""
    if not 0.0 <= opacity <= 1.0:
        raise InvalidArgumentError(f"opacity must be in [0, 1], got {opacity}")
    values = attribution.float().cpu()
    extent = values.abs().amax() if signed else values.clamp(min=0).amax()
    height, width = image.shape[1:]
    left, top, right, bottom = box
    # Pixel centres of the image in the map's normalised coordinates (align_corners=False).
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - left) / (right - left) * 2 - 1
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - top) / (bottom - top) * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    full = F.grid_sample(
        values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]
    _, _, heat = _heat(full, signed, colormap, extent)
    rgb = image.float().cpu().clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0) * 255
    seen = ((xs.abs() <= 1)[None, :] & (ys.abs() <= 1)[:, None]).unsqueeze(-1)
    alpha = torch.where(seen, opacity, 0.0)
    blend = ((1 - alpha) * rgb + alpha * heat).round().to(torch.uint8)
    return encode_png(blend, compress_level=compress_level)
