"""The pictures of an optimization job, and the memory they take: previews while it runs,
the result's PNGs once it is done.

A job's memory budget (``RenderSettings.memory_budget_mb``) covers these too, not only the
render's chunks: on CPU the preview is made between steps while the chunk's state is alive,
so :func:`preview_reserve` is set aside from what the chunks may use; the result is encoded
after the render has let its chunks go, so :func:`result_bytes` must fit the budget alone.
"""

from __future__ import annotations

import base64
import math
from concurrent.futures import ThreadPoolExecutor

import torch

from cnnviz.imaging import encode_png, to_pixels
from cnnviz.imaging.grid import IMAGE_GRID_PADDING, grid_layout, tile_grid
from cnnviz.optvis import StepReport, preview_bytes
from schemas.objectives import OBJECTIVES
from schemas.optimization import ObjectiveKind, OptimizationCreate, UnitResult, VsDataset

__all__ = [
    "PREVIEW_MAX_IMAGES",
    "PREVIEW_MAX_PIXELS",
    "RAW_MAX_BYTES",
    "b64",
    "grid_png",
    "pixels",
    "preview_layout",
    "preview_png",
    "preview_reserve",
    "result_bytes",
]

PREVIEW_MAX_IMAGES = 64
"""A running job's preview shows at most its first this many images."""
PREVIEW_MAX_PIXELS = 1024 * 1024
"""... tiled in a grid of about this many pixels: a picture to watch, not the result."""
RAW_MAX_BYTES = 64 * 1024 * 1024
"""The largest float32 image tensor a job keeps for ``result.npy`` (larger: not kept)."""

# Images converted to pixels at a time: the float temporaries of the conversion stay small.
_PIXEL_PIECE = 16
# What the result's encoded forms take, per byte of its pixels: the PNGs of the units and of
# the grid (about the pixels each for optimized images, which compress little), as base64
# (4/3), held as the result model, the shard's JSON partial and the final JSON string.
_ENCODED_PER_PIXEL_BYTE = 2 * 4 / 3 * 3


def preview_layout(n_images: int, images_per_unit: int) -> tuple[int, int, int]:
    """The preview of a job of ``n_images``: ``(images shown, columns, largest side)``.

    The first images (whole units: the images per unit divide 64), one row per unit when a
    unit has several, each shrunk so the grid takes about ``PREVIEW_MAX_PIXELS``.
    """
    count = min(n_images, PREVIEW_MAX_IMAGES)
    columns = images_per_unit if images_per_unit > 1 else math.ceil(math.sqrt(count))
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    side = math.isqrt(PREVIEW_MAX_PIXELS // (rows * columns)) - IMAGE_GRID_PADDING
    return count, columns, max(8, side)


def preview_png(report: StepReport, images_per_unit: int) -> tuple[bytes, int]:
    """The preview grid of a step as PNG bytes, and how many images it shows."""
    count, columns, side = preview_layout(len(report.objectives), images_per_unit)
    return grid_png(pixels(report.preview(max_images=count, max_side=side)), columns)[0], count


def preview_reserve(n_images: int, images_per_unit: int, channels: int, side: int) -> int:
    """Bytes a preview takes at its peak: the render's part, then its grid and PNG."""
    count, _, preview_side = preview_layout(n_images, images_per_unit)
    tile = count * channels * min(side, preview_side) ** 2
    # uint8 tiles, the grid's cells and the grid, and the PNG (at most about the pixels).
    return preview_bytes(channels, side, count, preview_side) + 4 * tile


def result_bytes(n_images: int, channels: int, side: int) -> int:
    """Bytes the result takes while it is encoded: the float images until they are pixels,
    the raw tensors kept, the pixels, the grid, and the encoded PNGs and JSON."""
    floats = n_images * channels * side * side * 4
    pixel_bytes = floats // 4
    raw = floats if floats <= RAW_MAX_BYTES else 0
    converting = floats + raw + pixel_bytes
    encoding = raw + 3 * pixel_bytes + int(_ENCODED_PER_PIXEL_BYTE * pixel_bytes)
    return max(converting, encoding)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` float in [0, 1] to ``(N, H, W, C)`` uint8 (``(N, H, W)`` for C = 1),
    a few images at a time: the conversion's float temporaries never span the batch."""
    out: torch.Tensor | None = None
    for start in range(0, images.shape[0], _PIXEL_PIECE):
        piece = to_pixels(images[start : start + _PIXEL_PIECE])
        if out is None:
            out = piece.new_empty((images.shape[0], *piece.shape[1:]))
        out[start : start + piece.shape[0]] = piece
    assert out is not None, "no images"
    return out


def grid_png(tiles: torch.Tensor, columns: int | None = None) -> tuple[bytes, int]:
    """uint8 ``tiles`` (from :func:`pixels`) on white, a near-square grid by default: PNG
    bytes and columns."""
    layout = grid_layout(
        tiles.shape[0],
        (tiles.shape[1], tiles.shape[2]),
        columns=columns,
        padding=IMAGE_GRID_PADDING,
    )
    return encode_png(tile_grid(tiles, layout, fill=255)), layout.columns


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_tiles(tiles: torch.Tensor, columns: int | None) -> tuple[bytes, int, list[bytes]]:
    """The PNGs of the uint8 ``tiles`` of :func:`pixels`: their grid, its columns, and each
    tile's own, encoded on as many threads as the job has for torch (Pillow encodes without
    the interpreter lock). One after another, the 257 PNGs of resnet18's ``layer3`` took
    1.5 s of a 3.6 s job on a GPU."""
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        grid = pool.submit(grid_png, tiles, columns)  # the largest: first
        each = list(pool.map(encode_png, tiles))
        return (*grid.result(), each)


def unit_results(
    request: OptimizationCreate,
    pngs: list[bytes],
    final: list[float],
    initial: list[float],
    compared: list[VsDataset | None],
) -> list[UnitResult]:
    """One entry per image, from the PNGs of its tiles (:func:`encode_tiles`) and, with
    ``exemplars_job``, its comparison with the data set (else ``compared`` is empty)."""
    kind = request.objective or ObjectiveKind.CHANNEL
    units: list[UnitResult] = []
    for i in range(len(pngs)):
        unit, sample = divmod(i, request.images_per_unit)
        channel: int | None = None
        y = x = None
        if OBJECTIVES[kind].per_channel:
            assert isinstance(request.channels, list)
            channel = request.channels[unit]
        elif kind == ObjectiveKind.NEURON and request.neuron is not None:
            channel, y, x = request.neuron.channel, request.neuron.y, request.neuron.x
        units.append(
            UnitResult(
                channel=channel,
                sample=sample,
                y=y,
                x=x,
                image=b64(pngs[i]),
                objective=final[i],
                initial_objective=initial[i],
                vs_dataset=compared[i] if compared else None,
            )
        )
    return units
