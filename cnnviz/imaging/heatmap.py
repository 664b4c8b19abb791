"""Activations to colour: normalisation, quantisation and named colormaps.

A heatmap is kept as palette indices, not RGB: each value becomes one of :data:`LEVELS` colour
levels, and index :data:`PAD_INDEX` is left free for the padding between tiles. The 256-entry
palette is the colormap sampled at ``LEVELS`` points plus the padding colour. A PNG of indices
and a palette is 3× less data to compress than RGB, and encodes 3–5× faster (see
:mod:`cnnviz.imaging.png`); RGB, where wanted, is one vectorised lookup (:func:`apply_palette`).

Colours come from matplotlib's colormap registry (``matplotlib.colormaps``), never from tables
typed by hand, and the quantisation is matplotlib's own: a value ``v`` in ``[0, 1]`` gets the
colour ``matplotlib.colormaps[name].resampled(LEVELS)(v, bytes=True)``. No figure is created.
"""

from __future__ import annotations

import difflib
import functools
from typing import Literal

import numpy as np
import torch

from cnnviz.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_COLORMAP",
    "LEVELS",
    "PAD_COLOUR",
    "PAD_INDEX",
    "Normalize",
    "apply_palette",
    "colormap_lut",
    "colormap_names",
    "palette",
    "quantize",
    "range_of",
    "value_range",
]

Normalize = Literal["channel", "layer"]

DEFAULT_COLORMAP = "viridis"
LEVELS = 255
PAD_INDEX = LEVELS
PAD_COLOUR: tuple[int, int, int] = (255, 255, 255)
_SUGGESTED = ("viridis", "gray", "magma", "inferno", "plasma", "cividis", "turbo", "coolwarm")


def colormap_names() -> list[str]:
    """Every colormap name that :func:`colormap_lut` accepts (matplotlib's registry, sorted)."""
    from matplotlib import colormaps

    return sorted(colormaps)


def _check_colormap(name: str) -> None:
    from matplotlib import colormaps

    if name in colormaps:
        return
    close = difflib.get_close_matches(name, list(colormaps), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise InvalidArgumentError(
        f"unknown colormap {name!r}; {hint}try {', '.join(_SUGGESTED)}, or any of matplotlib's "
        f"{len(colormaps)} colormap names (append '_r' to reverse one)"
    )


@functools.lru_cache(maxsize=64)
def colormap_lut(name: str = DEFAULT_COLORMAP, levels: int = LEVELS) -> torch.Tensor:
    """The colormap ``name`` sampled at ``levels`` evenly spaced points: ``(levels, 3) uint8``.

    Raises :class:`InvalidArgumentError` for a name matplotlib does not know. The tensor is
    shared (cached): do not modify it.
    """
    from matplotlib import colormaps

    _check_colormap(name)
    resampled = colormaps[name].resampled(levels)
    rgba = resampled(np.arange(levels), bytes=True)  # integer input: entry i of the LUT
    return torch.from_numpy(np.ascontiguousarray(rgba[:, :3]))


@functools.lru_cache(maxsize=64)
def palette(
    name: str = DEFAULT_COLORMAP, pad_colour: tuple[int, int, int] = PAD_COLOUR
) -> torch.Tensor:
    """The 256-entry palette ``(256, 3) uint8``: the colormap's ``LEVELS`` colours, then the
    padding colour at :data:`PAD_INDEX`. Shared (cached): do not modify it."""
    pad = torch.tensor([pad_colour], dtype=torch.uint8)
    return torch.cat([colormap_lut(name, LEVELS), pad])


def value_range(
    activations: torch.Tensor, normalize: Normalize
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(lo, hi)`` that map to the first and last colour, each ``(N,)`` float32.

    ``activations`` is ``(N, H, W)``. ``"channel"``: each channel's own min and max, so every
    tile uses the whole colormap. ``"layer"``: one min and max over all ``N`` channels, so tiles
    can be compared with each other. Pass the whole layer to get a layer range even when only
    some channels are drawn.
    """
    flat = activations.reshape(activations.shape[0], -1)
    return range_of(flat.amin(dim=1), flat.amax(dim=1), normalize)


def range_of(
    lows: torch.Tensor, highs: torch.Tensor, normalize: Normalize
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`value_range` from each channel's min ``lows`` and max ``highs`` ``(N,)``, for a
    caller that has them already."""
    if normalize not in ("channel", "layer"):
        raise InvalidArgumentError(f"normalize must be 'channel' or 'layer', got {normalize!r}")
    if normalize == "layer":
        return lows.amin().expand_as(lows), highs.amax().expand_as(highs)
    return lows, highs


def quantize(activations: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Palette indices of ``activations`` ``(N, H, W)`` float: ``(N, H, W) uint8`` in
    ``[0, LEVELS)``.

    Channel ``i`` maps ``lo[i]`` to index 0 and ``hi[i]`` to the last level, in ``LEVELS``
    equal bins (matplotlib's rule: ``floor(v * LEVELS)``, the top value in the last bin).
    A constant channel (``hi == lo``) is all index 0; NaN is index 0.
    """
    span = hi - lo
    scale = torch.where(span > 0, 1.0 / span, torch.zeros_like(span)).view(-1, 1, 1)
    v = (activations - lo.view(-1, 1, 1)) * scale
    v = torch.nan_to_num_(v.mul_(LEVELS), nan=0.0)
    return v.floor_().clamp_(0, LEVELS - 1).to(torch.uint8)


def apply_palette(indices: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """RGB of palette ``indices`` ``(...) uint8``: ``(..., 3) uint8``, one vectorised lookup."""
    return colours.to(indices.device)[indices.long()]
