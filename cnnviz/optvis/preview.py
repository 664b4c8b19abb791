"""Previews of a running render: its first images, shrunk, as one batch to tile."""

from __future__ import annotations

import torch

from cnnviz.optvis.job import _Job

__all__ = ["preview_bytes"]


def _no_preview(max_images: int | None, max_side: int | None) -> torch.Tensor:
    raise RuntimeError("this report carries no preview")


_PREVIEW_PIECE = 8  # full-size images a preview holds at a time, before shrinking them


def _preview(
    job: _Job,
    chunks: list[list[int]],
    images: torch.Tensor,
    done: set[int],
    current: int,
    raw: torch.Tensor,
    max_images: int | None,
    max_side: int | None,
) -> torch.Tensor:
    """The first ``max_images`` units now (finished chunks final, the current one live,
    others' start), shrunk to ``max_side``. Only those units are computed, a few at a time,
    so the full-size images never exist all at once."""
    count = images.shape[0] if max_images is None else max(0, min(max_images, images.shape[0]))
    height, width = _shrunk_size(images.shape[-2], images.shape[-1], max_side)
    out = images.new_empty((count, images.shape[1], height, width))
    with torch.no_grad():
        for k, units in enumerate(chunks):
            # Chunks of grouped units (diversity) need not be consecutive runs.
            rows = [i for i, unit in enumerate(units) if unit < count]
            for start in range(0, len(rows), _PREVIEW_PIECE):
                piece = rows[start : start + _PREVIEW_PIECE]
                wanted = [units[i] for i in piece]
                if k in done:
                    pictures = images[wanted]
                else:
                    source = raw.detach()[piece] if k == current else job.init_raw(wanted)
                    pictures = job.param.images(source).float().cpu()
                out[wanted] = _shrink(pictures, (height, width))
    return out


def preview_bytes(channels: int, side: int, max_images: int, max_side: int | None) -> int:
    """At most what :meth:`StepReport.preview` allocates for ``max_images`` images of
    ``channels × side × side``: a few full-size images at a time (and the parameterization's
    work on them: a Fourier spectrum is about twice the image), and the shrunk result."""
    height, width = _shrunk_size(side, side, max_side)
    piece = min(max_images, _PREVIEW_PIECE) * channels * side * side * 4 * 3
    return piece + max_images * channels * height * width * 4


def _shrunk_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def _shrink(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, C, H, W)`` resized to ``size`` by area averaging (as they are when equal)."""
    if tuple(images.shape[-2:]) == size or images.shape[0] == 0:
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="area")
