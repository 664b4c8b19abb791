"""Tiling images into one grid, in a single vectorised copy, and the numbers that locate tiles.

The layout is torchvision's ``make_grid``: tiles left to right, then top to bottom, with
``padding`` pixels between tiles and around the edge, and padding where the last row has no
tile. Tile ``i`` has its top-left pixel at ``layout.origin(i)``. ``make_grid`` itself turns
one-channel tiles into three and works in float; this does the same copy on palette indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnnviz.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_GRID_PIXELS",
    "GridLayout",
    "grid_layout",
    "image_grid",
    "tile_grid",
    "to_pixels",
    "upscale",
]

# 4096×4096: a grid is a picture to look at, and its size must not be an attack on memory.
DEFAULT_MAX_GRID_PIXELS = 4096 * 4096
IMAGE_GRID_PADDING = 2  # image_grid's default, white pixels between images


@dataclass(frozen=True)
class GridLayout:
    """Where each tile is in a grid image.

    ``tile`` is ``(height, width)`` of one tile in grid pixels (after upscaling); ``channels``
    the channel shown by each tile, in tile order. Tile ``i`` is at row ``i // columns``,
    column ``i % columns``.
    """

    rows: int
    columns: int
    tile: tuple[int, int]
    padding: int
    channels: tuple[int, ...]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the whole grid image."""
        height, width = self.tile
        return (
            self.rows * (height + self.padding) + self.padding,
            self.columns * (width + self.padding) + self.padding,
        )

    def origin(self, i: int) -> tuple[int, int]:
        """``(y, x)`` of the top-left pixel of tile ``i``."""
        row, column = divmod(i, self.columns)
        return (
            self.padding + row * (self.tile[0] + self.padding),
            self.padding + column * (self.tile[1] + self.padding),
        )


def grid_layout(
    count: int,
    tile: tuple[int, int],
    *,
    columns: int | None = None,
    padding: int = 1,
    channels: Sequence[int] | None = None,
    max_pixels: int = DEFAULT_MAX_GRID_PIXELS,
) -> GridLayout:
    """The layout of ``count`` tiles of ``tile`` ``(height, width)`` pixels.

    ``columns`` defaults to ``ceil(sqrt(count))`` (a near-square grid) and is capped at
    ``count``. ``channels`` defaults to ``0..count-1``. Raises :class:`InvalidArgumentError`
    for bad numbers, or when the grid would exceed ``max_pixels``.
    """
    if count < 1:
        raise InvalidArgumentError("a grid needs at least one tile")
    if columns is not None and columns < 1:
        raise InvalidArgumentError(f"columns must be >= 1, got {columns}")
    if padding < 0:
        raise InvalidArgumentError(f"padding must be >= 0, got {padding}")
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    chosen = tuple(range(count)) if channels is None else tuple(int(c) for c in channels)
    if len(chosen) != count:
        raise InvalidArgumentError(f"{len(chosen)} channels given for {count} tiles")
    layout = GridLayout(math.ceil(count / columns), columns, tile, padding, chosen)
    height, width = layout.size
    if height * width > max_pixels:
        raise InvalidArgumentError(
            f"the grid would be {width}×{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} by {width * height - max_pixels} ({width * height / max_pixels:.2f} "
            "times); draw fewer channels (a list or top-k), a smaller scale or less padding"
        )
    return layout


def upscale(tiles: torch.Tensor, scale: int) -> torch.Tensor:
    """``(N, h, w, ...)`` to ``(N, h*scale, w*scale, ...)``, each pixel a ``scale²`` block."""
    if scale < 1:
        raise InvalidArgumentError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return tiles
    n, h, w, *rest = tiles.shape
    blocks = tiles[:, :, None, :, None].expand(n, h, scale, w, scale, *rest)
    return blocks.reshape(n, h * scale, w * scale, *rest)


def tile_grid(tiles: torch.Tensor, layout: GridLayout, fill: int = 0) -> torch.Tensor:
    """The grid image of ``tiles`` ``(N, h, w)`` or ``(N, h, w, C)``, any dtype.

    Returns ``(H, W)`` or ``(H, W, C)`` with ``(H, W) == layout.size``, on ``tiles``'s device;
    padding and empty cells are ``fill``. ``layout.tile`` must equal ``(h, w)``.
    """
    n, h, w, *rest = tiles.shape
    if (h, w) != layout.tile or n > layout.rows * layout.columns:
        raise InvalidArgumentError(
            f"{n} tiles of {h}×{w} do not fit a layout of {layout.rows}×{layout.columns} "
            f"tiles of {layout.tile[0]}×{layout.tile[1]}"
        )
    p = layout.padding
    # Every cell is a tile plus its padding below and right; the first row and column of
    # padding are the grid's top and left edge.
    cells = tiles.new_full((layout.rows * layout.columns, h + p, w + p, *rest), fill)
    cells[:n, :h, :w] = tiles
    body = cells.view(layout.rows, layout.columns, h + p, w + p, *rest).transpose(1, 2)
    height, width = layout.size
    grid = tiles.new_full((height, width, *rest), fill)
    grid[p:, p:] = body.reshape(height - p, width - p, *rest)
    return grid


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` float in [0, 1] to ``(N, H, W, C)`` uint8, or ``(N, H, W)`` for C = 1."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def image_grid(
    images: torch.Tensor,
    *,
    columns: int | None = None,
    padding: int = IMAGE_GRID_PADDING,
    fill: int = 255,
) -> tuple[torch.Tensor, GridLayout]:
    """Images ``(N, C, H, W)`` float in [0, 1] tiled on ``fill`` (white): uint8 grid, layout.

    The grid is ``(H', W', C)``, or ``(H', W')`` for one-channel images; ready for
    :func:`cnnviz.imaging.png.encode_png`.
    """
    tiles = to_pixels(images)
    layout = grid_layout(
        tiles.shape[0], (tiles.shape[1], tiles.shape[2]), columns=columns, padding=padding
    )
    return tile_grid(tiles, layout, fill=fill), layout
