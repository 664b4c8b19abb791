"""Dataset exemplars: the images a unit responds to most (and least), mined in one pass.

For every channel of each layer, a streaming top-k keeps the ``k`` best images seen so far:
``(C, k)`` scores and image indices on the device, merged with each batch, so memory is
O(channels × k) whatever the size of the data set. Top-k lists merge associatively
(concatenate, then take the top k again), which is what lets shards run anywhere and be
merged later. Ties are broken by the lower image index, so a merge of shards equals one pass.

A channel's score for an image is its activation pooled over space: ``mean`` (the seed's
rule) or ``max``; a 1-D layer (a linear layer, logits) scores the value itself. The position
of the spatial maximum is kept for crops. Every layer is read unit-first
(:func:`cnnviz.axes.unit_maps`): a channel is a unit, a feature of a tokens layer pooled over
its token grid (prefix tokens left out), positions are in that grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cnnviz.axes import unit_maps
from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging.preprocess import denormalize
from cnnviz.layers import LayerIndex, preserved_state

__all__ = [
    "ReceptiveField",
    "TopK",
    "mine",
    "pool",
    "receptive_field",
]

Pool = Literal["mean", "max"]


def pool(activations: torch.Tensor, how: Pool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(N, C)`` float32 and positions ``(N, C, 2)`` int64 ``(y, x)`` of the maximum.

    ``activations`` is ``(N, C, H, W)``, ``(N, C, L)`` (position ``(0, l)``) or ``(N, C)``
    (a 1-D layer: the value itself, position ``(0, 0)``).
    """
    if activations.dim() < 2:
        raise InvalidArgumentError(
            f"activations need a batch and a channel dimension, got "
            f"shape {tuple(activations.shape)}"
        )
    n, c = activations.shape[:2]
    flat = activations.reshape(n, c, -1).float()
    where = flat.argmax(dim=2)
    width = activations.shape[-1] if activations.dim() >= 3 else 1
    positions = torch.stack([where // width, where % width], dim=2)
    scores = flat.mean(dim=2) if how == "mean" else flat.amax(dim=2)
    return scores, positions


class TopK:
    """The ``k`` highest (or, with ``largest=False``, lowest) scores of each of ``channels``.

    ``scores (C, k)``, ``index (C, k)`` (image indices, -1 while fewer were seen) and
    ``position (C, k, 2)`` live on ``device``; best first, ties to the lower image index.
    """

    def __init__(
        self, channels: int, k: int, largest: bool = True, device: torch.device | str = "cpu"
    ):
        self.k = k
        self.largest = largest
        fill = -torch.inf if largest else torch.inf
        self.scores = torch.full((channels, 0), fill, device=device)
        self.index = torch.empty((channels, 0), dtype=torch.long, device=device)
        self.position = torch.empty((channels, 0, 2), dtype=torch.long, device=device)

    def update(self, scores: torch.Tensor, index: torch.Tensor, position: torch.Tensor) -> None:
        """Merge a batch: ``scores (N, C)``, image ``index (N,)``, ``position (N, C, 2)``."""
        c = self.scores.shape[0]
        self._keep(
            torch.cat([self.scores, scores.t().to(self.scores)], dim=1),
            torch.cat([self.index, index.to(self.index).expand(c, -1)], dim=1),
            torch.cat([self.position, position.transpose(0, 1).to(self.position)], dim=1),
        )

    def merge(self, other: TopK) -> None:
        """Take in another top-k of the same channels (a shard's)."""
        self._keep(
            torch.cat([self.scores, other.scores.to(self.scores)], dim=1),
            torch.cat([self.index, other.index.to(self.index)], dim=1),
            torch.cat([self.position, other.position.to(self.position)], dim=1),
        )

    def _keep(self, scores: torch.Tensor, index: torch.Tensor, position: torch.Tensor) -> None:
        # Order by image index, then (stably) by score: equal scores stay in index order.
        by_index = index.argsort(dim=1, stable=True)
        scores = scores.gather(1, by_index)
        order = scores.argsort(dim=1, descending=self.largest, stable=True)[:, : self.k]
        keep = by_index.gather(1, order)
        self.scores = scores.gather(1, order)
        self.index = index.gather(1, keep)
        self.position = position.gather(1, keep[..., None].expand(-1, -1, 2))

    def to_json(self) -> dict[str, list]:
        return {
            "scores": self.scores.cpu().tolist(),
            "index": self.index.cpu().tolist(),
            "position": self.position.cpu().tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, list], k: int, largest: bool) -> TopK:
        scores = torch.tensor(data["scores"], dtype=torch.float32)
        top = cls(scores.shape[0], k, largest)
        top.scores = scores
        top.index = torch.tensor(data["index"], dtype=torch.long).reshape(scores.shape)
        top.position = torch.tensor(data["position"], dtype=torch.long).reshape(*scores.shape, 2)
        return top


@dataclass
class LayerTopK:
    """The top (and optionally bottom) k of every channel of one layer."""

    top: TopK
    bottom: TopK | None


def mine(
    index: LayerIndex,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    layers: Sequence[str],
    *,
    k: int,
    how: Pool = "mean",
    bottom: bool = False,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, LayerTopK]:
    """Stream ``batches`` through the model once, truncated at the deepest of ``layers``.

    Each batch is ``(x (N, C, H, W) float32 normalised, image index (N,), ok (N,) bool)``;
    images with ``ok`` False (unreadable files) are left out. ``on_batch(n)`` is called with
    the number of images of each batch once it is done; it may raise to stop.
    Returns ``{layer: LayerTopK}``, everything on ``device``.
    """
    tops: dict[str, LayerTopK] = {}
    infos = {info.name: info for info in index.usable(layers)}  # AmbiguousAxesError
    with torch.inference_mode():
        for x, image_index, ok in batches:
            keep = ok.bool()
            if keep.any():
                x = x[keep].to(device, non_blocking=True)
                kept = image_index[keep].to(device)
                outputs = index.capture(x, layers)
                for name in layers:
                    scores, positions = pool(unit_maps(outputs[name], infos[name]), how)
                    if name not in tops:
                        channels = scores.shape[1]
                        tops[name] = LayerTopK(
                            TopK(channels, k, True, device),
                            TopK(channels, k, False, device) if bottom else None,
                        )
                    tops[name].top.update(scores, kept, positions)
                    if tops[name].bottom is not None:
                        tops[name].bottom.update(scores, kept, positions)  # type: ignore[union-attr]
            if on_batch is not None:
                on_batch(int(image_index.shape[0]))
    return tops


@dataclass(frozen=True)
class ReceptiveField:
    """Where a unit of a layer looks in the input: ``box(y, x)`` in input pixels.

    ``size`` ``(h, w)`` is the extent of the input that reaches one unit, ``stride`` the
    input pixels between neighbouring units, ``offset`` the top-left corner of unit (0, 0)'s
    field (negative where it starts in the padding).
    """

    size: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    input_size: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit ``(y, x)``, clipped to the input."""
        top = round(self.offset[0] + y * self.stride[0])
        left = round(self.offset[1] + x * self.stride[1])
        h, w = self.input_size
        return (
            max(0, top),
            max(0, left),
            min(h, top + self.size[0]),
            min(w, left + self.size[1]),
        )


def receptive_field(
    index: LayerIndex, layer: str, input_shape: tuple[int, int, int], probes: int = 8
) -> ReceptiveField:
    """The receptive field of ``layer``'s units, measured from the network's connectivity.

    The input pixels that reach a unit are those where the gradient of that unit is non-zero:
    the support of the gradient of the central unit, united over ``probes`` random inputs (a
    ReLU that is off for one input hides its paths; other inputs open them), gives the field's
    size and where it starts; the layer's spatial size gives the stride. Works for any graph
    (branches, dilations, pooling) without reading module attributes. A 1-D layer's field is
    the whole input. ``layer`` is read unit-first: a tokens layer's field is that of its
    central grid token.
    """
    info = index.usable([layer])[0]
    model = index.model
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    c, h, w = input_shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((probes, c, h, w), generator=generator).to(device).requires_grad_(True)
    with preserved_state(model), torch.enable_grad():
        out = unit_maps(index.capture(x, [layer])[layer], info)
        if info.axes == "vector":
            return ReceptiveField((h, w), (float(h), float(w)), (0.0, 0.0), (h, w))
        lh, lw = out.shape[2:]
        cy, cx = lh // 2, lw // 2
        (grad,) = torch.autograd.grad(out[:, :, cy, cx].sum(), x)
    support = grad.abs().sum(dim=(0, 1)) > 0  # (h, w)
    rows = support.any(dim=1).nonzero().flatten()
    cols = support.any(dim=0).nonzero().flatten()
    sy, sx = h / lh, w / lw
    if rows.numel() == 0:
        return ReceptiveField((round(sy), round(sx)), (sy, sx), (cy * sy, cx * sx), (h, w))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    # Measured at the central unit, where the border clips the field least; a field larger
    # than the input is clipped anyway when a box is drawn.
    size = (bottom - top, right - left)
    offset = (top - cy * sy, left - cx * sx)
    return ReceptiveField(size, (sy, sx), offset, (h, w))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` activation maps bilinearly resized to ``(N, *size)``."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]


Mode = Literal["full", "crop", "mask"]


def exemplar_tiles(
    index: LayerIndex,
    x: torch.Tensor,
    positions: Sequence[tuple[int, int]],
    layer: str,
    channel: int,
    mode: Mode,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Tiles ``(N, C, H, W)`` float32 in [0, 1] of exemplar images, as ``mode`` shows them.

    ``x`` is the images as the model's normalised input ``(N, C, H, W)``; ``positions`` the
    ``(y, x)`` of the channel's maximum in each, in the layer's grid. ``full``: the images;
    ``crop``: the receptive field of the maximum's unit (:func:`receptive_field`), scaled to
    the tile size; ``mask``: the channel's activation upsampled over the image, the image
    kept where it is above half its maximum and darkened elsewhere (NetDissect's view).
    """
    pixels = denormalize(x.float().cpu(), mean, std).clamp(0, 1)
    h, w = pixels.shape[2:]
    if mode == "full":
        return pixels
    if mode == "crop":
        field = receptive_field(index, layer, (pixels.shape[1], h, w))
        tiles = []
        for image, (y, xx) in zip(pixels, positions, strict=True):
            top, left, bottom, right = field.box(y, xx)
            crop = image[:, top:bottom, left:right][None]
            tiles.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(tiles).clamp(0, 1)
    if mode == "mask":
        param = next(index.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            info = index.usable([layer])[0]
            out = unit_maps(index.capture(x.to(device), [layer])[layer], info).float().cpu()
        if info.axes == "vector":
            return pixels  # a 1-D layer looks at the whole image
        maps = upsample(out[:, channel], (h, w))
        peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        keep = (maps >= 0.5 * peak) & (maps > 0)
        return pixels * (0.2 + 0.8 * keep[:, None].float())
    raise InvalidArgumentError(f"unknown mode {mode!r}; choose full, crop or mask")
