"""Network dissection: what each unit of a layer detects, from a data set's concepts.

Two passes over the data (see ``docs/dissection.md`` for the protocol stated in full):

* :func:`first_pass` streams the images once, as the exemplar pass does, and keeps per unit
  its top-k images (:class:`~cnnviz.exemplars.TopK`), the exact top ``m`` of its activations
  over every image and position (:class:`TopValues`, enough for the ``1 - quantile``
  quantile, :func:`thresholds`) and, per image-level label, the sum of its pooled
  activations (:class:`LabelSums`). All three merge associatively, so a data set cut into
  shards gives what one pass gives.
* :func:`second_pass` streams the images again with their concept masks, upsamples each
  unit's map to the mask (bilinear, ``align_corners=False``), binarises it at its threshold
  (``> T``) and counts, per concept, the pixels of on ∧ concept, of on, and of the concept
  (:class:`IoUTally`).

Memory is bounded by a batch (and the top ``m`` values, ``quantile`` of one layer's
activations): nothing grows with the data set but those values.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnviz.axes import unit_maps
from cnnviz.exemplars import TopK, pool
from cnnviz.layers import LayerIndex
from cnnviz.mis import Extremes

__all__ = [
    "IoUTally",
    "LabelSums",
    "LayerPass",
    "MapCache",
    "TopValues",
    "count_ious",
    "first_pass",
    "iou",
    "second_pass",
    "tally_from_json",
    "tally_to_json",
    "thresholds",
    "top_values_needed",
]

# Elements of one upsampled chunk of maps (float32): 16 Mi = 64 MiB, whatever the layer's
# width, batch or mask size, so that the peak stays flat (channels are taken in chunks).
_UPSAMPLE_ELEMENTS = 1 << 24


def top_values_needed(values: int, quantile: float) -> int:
    """How many of the highest of ``values`` activations the ``1 - quantile`` quantile reads.

    NumPy's linear quantile of ``n`` sorted values at ``1 - q`` interpolates between the
    values at positions ``floor(p)`` and ``floor(p) + 1`` with ``p = (1 - q)(n - 1)``: the
    ``n - floor(p)`` highest. Any ``n' <= values`` needs no more than this (a skipped image
    only lowers ``n``), plus one for the rounding of ``p``.
    """
    if values <= 0:
        return 1
    p = (1.0 - quantile) * (values - 1)
    return min(values, values - math.floor(p) + 1)


class TopValues:
    """The ``m`` highest values of each of ``channels`` units and how many were seen.

    ``values (C, <= m)`` float32, sorted high to low. Merging two is taking the top ``m`` of
    both: exact and associative, whatever the order.
    """

    def __init__(self, channels: int, m: int, device: torch.device | str = "cpu") -> None:
        self.m = m
        self.count = 0
        self.values = torch.empty((channels, 0), device=device)

    def update(self, maps: torch.Tensor) -> None:
        """Take in ``maps (N, C, H, W)``: every position of every image."""
        c = maps.shape[1]
        flat = maps.detach().float().transpose(0, 1).reshape(c, -1)
        self.count += flat.shape[1]
        self._keep(torch.cat([self.values, flat.to(self.values)], dim=1))

    def merge(self, other: TopValues) -> None:
        self.count += other.count
        self._keep(torch.cat([self.values, other.values.to(self.values)], dim=1))

    def _keep(self, values: torch.Tensor) -> None:
        m = min(self.m, values.shape[1])
        self.values = values.topk(m, dim=1, largest=True, sorted=True).values

    def to_json(self) -> dict[str, object]:
        data = self.values.cpu().contiguous().numpy().astype("<f4").tobytes()
        return {
            "m": self.m,
            "count": self.count,
            "shape": list(self.values.shape),
            "values": base64.b64encode(data).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TopValues:
        shape = [int(v) for v in data["shape"]]  # type: ignore[attr-defined]
        raw = base64.b64decode(str(data["values"]))
        top = cls(shape[0], int(data["m"]))  # type: ignore[call-overload]
        top.values = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy().reshape(shape))
        top.count = int(data["count"])  # type: ignore[call-overload]
        return top


def thresholds(top: TopValues, quantile: float) -> np.ndarray:
    """Each unit's ``1 - quantile`` quantile of all its values: ``(C,) float64``.

    Exactly what ``numpy.quantile(values.astype(float64), 1 - quantile)`` (method
    ``linear``) gives over the unit's ``top.count`` values, read from the highest ones.
    """
    n = top.count
    if n == 0:
        return np.full(top.values.shape[0], np.nan)
    if n - math.floor((1.0 - quantile) * (n - 1)) > top.values.shape[1]:
        raise ValueError(f"{top.values.shape[1]} top values cannot give the quantile of {n}")
    values = top.values.double().numpy()  # (C, m) high to low
    p = (1.0 - quantile) * (n - 1)
    below = math.floor(p)
    gamma = p - below
    # Ascending position i is descending position n - 1 - i.
    lo = values[:, n - 1 - below]
    hi = values[:, max(n - 2 - below, 0)]
    diff = hi - lo
    # NumPy's _lerp: from the nearer end, so that gamma = 1 gives ``hi`` exactly.
    return lo + diff * gamma if gamma < 0.5 else hi - diff * (1.0 - gamma)


def float32_below(values: np.ndarray) -> torch.Tensor:
    """The largest float32 at most each value: ``x > float32_below(t)`` equals ``x > t`` for
    every float32 ``x``, so that float32 maps are compared with float64 thresholds exactly."""
    as32 = values.astype(np.float32)
    over = as32.astype(np.float64) > values
    as32[over] = np.nextafter(as32[over], np.float32(-np.inf))
    return torch.from_numpy(as32)


class LabelSums:
    """Per unit and image-level label, the sum of the unit's pooled activations, and how many
    images each label has: ``sums (C, L) float64``, ``counts (L,) int64``."""

    def __init__(self, channels: int, labels: int) -> None:
        self.sums = torch.zeros((channels, labels), dtype=torch.float64)
        self.counts = torch.zeros(labels, dtype=torch.long)

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores (N, C)`` pooled activations, ``targets (N,)`` label indices (-1: none)."""
        keep = targets >= 0
        scores, targets = scores[keep].double().cpu(), targets[keep].cpu()
        self.sums.index_add_(1, targets, scores.t())
        self.counts += torch.bincount(targets, minlength=self.counts.shape[0])

    def merge(self, other: LabelSums) -> None:
        self.sums += other.sums
        self.counts += other.counts

    def means(self) -> torch.Tensor:
        """``(C, L) float64``: NaN for a label with no image."""
        return self.sums / self.counts.double().where(self.counts > 0, torch.nan)

    def to_json(self) -> dict[str, list]:
        return {"sums": self.sums.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> LabelSums:
        sums = torch.tensor(data["sums"], dtype=torch.float64)
        out = cls(sums.shape[0], sums.shape[1])
        out.sums = sums
        out.counts = torch.tensor(data["counts"], dtype=torch.long)
        return out


@dataclass
class LayerPass:
    """What the first pass keeps of one layer."""

    top: TopK
    values: TopValues | None
    labels: LabelSums | None
    extremes: Extremes | None = None  # with ``extremes``: the MIS's references and queries


def first_pass(
    index: LayerIndex,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    layers: Sequence[str],
    *,
    k: int,
    top_m: Callable[[str, tuple[int, ...]], int] | None = None,
    targets: Sequence[int] | None = None,
    labels: int = 0,
    extremes: int = 0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    on_maps: Callable[[dict[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> dict[str, LayerPass]:
    """One forward over ``batches`` (as :func:`cnnviz.exemplars.mine` takes them), truncated
    at the deepest of ``layers``: per layer the top ``k`` images by mean activation, and

    * with ``top_m`` (``(layer, unit map shape (C, H, W)) -> m``): each unit's ``m`` highest
      activations over all images and positions;
    * with ``targets`` (image index → label index, -1 for none): per-label sums of the
      units' mean activations over ``labels`` labels.

    ``on_maps(maps, keep)`` sees each batch's unit maps ``{layer: (n, C, h, w)}`` of the
    images ``keep (N,) bool`` of the batch (a :class:`MapCache` keeps them for the counts).
    """
    out: dict[str, LayerPass] = {}
    infos = {info.name: info for info in index.usable(layers)}  # AmbiguousAxesError
    target_t = torch.tensor(list(targets), dtype=torch.long) if targets is not None else None
    with torch.inference_mode():
        for x, image_index, ok in batches:
            keep = ok.bool()
            if keep.any():
                kept = image_index[keep]
                outputs = index.capture(x[keep].to(device, non_blocking=True), layers)
                by_layer = {name: unit_maps(outputs[name], infos[name]) for name in layers}
                if on_maps is not None:
                    on_maps(by_layer, keep)
                for name, maps in by_layer.items():
                    scores, positions = pool(maps, "mean")
                    if name not in out:
                        c = maps.shape[1]
                        out[name] = LayerPass(
                            TopK(c, k, True, device),
                            TopValues(c, top_m(name, tuple(maps.shape[1:])), device)
                            if top_m is not None
                            else None,
                            LabelSums(c, labels) if target_t is not None else None,
                            Extremes(c, extremes, device) if extremes else None,
                        )
                    entry = out[name]
                    entry.top.update(scores, kept.to(device), positions)
                    if entry.extremes is not None:
                        entry.extremes.update(scores, kept.to(device), positions)
                    if entry.values is not None:
                        entry.values.update(maps)
                    if entry.labels is not None and target_t is not None:
                        entry.labels.update(scores, target_t[kept])
            if on_batch is not None:
                on_batch(int(image_index.shape[0]))
    return out


class IoUTally:
    """Counts over a data set for one layer: ``intersection (C, K + 1)`` pixels on and of
    concept ``k`` (column 0: of no concept), ``on (C,)`` pixels on, ``area (K + 1,)`` pixels
    of each concept, all int64."""

    def __init__(self, channels: int, concepts: int) -> None:
        self.intersection = torch.zeros((channels, concepts + 1), dtype=torch.long)
        self.on = torch.zeros(channels, dtype=torch.long)
        self.area = torch.zeros(concepts + 1, dtype=torch.long)

    def update(self, maps: torch.Tensor, masks: torch.Tensor, threshold: torch.Tensor) -> None:
        """``maps (N, C, h, w)``, ``masks (N, H, W)`` concept indices, ``threshold (C,)``
        float32 (see :func:`float32_below`): on is the map upsampled to ``(H, W)`` > it."""
        c = maps.shape[1]
        height, width = int(masks.shape[1]), int(masks.shape[2])
        k1 = self.area.shape[0]
        device = maps.device
        masks = masks.to(device, torch.long)
        self.area += torch.bincount(masks.flatten(), minlength=k1).cpu()
        threshold = threshold.to(device)
        # Bilinear upsampling is a convex combination of the map's values: a map whose
        # maximum is not above T has no pixel on. At the top 0.5% quantile most (image,
        # unit) pairs are such, and are never upsampled (measured: 10× less time for
        # ShapesNet's block4). The margin keeps any pair that float32 rounding of the
        # weights could lift over T, so the count stays exact.
        peak = maps.flatten(2).amax(dim=2).float()  # (N, C)
        margin = threshold - threshold.abs() * 1e-5 - 1e-30
        images, units = (peak > margin[None]).nonzero(as_tuple=True)
        step = max(1, _UPSAMPLE_ELEMENTS // (height * width))
        for start in range(0, int(images.numel()), step):
            img = images[start : start + step]
            unit = units[start : start + step]
            chosen = maps[img, unit].float()[:, None]  # (P, 1, h, w)
            up = F.interpolate(chosen, size=(height, width), mode="bilinear", align_corners=False)
            on = up[:, 0] > threshold[unit].view(-1, 1, 1)  # (P, H, W)
            # Only the on pixels are read again: a few percent of the upsampled ones.
            pair, pixel = on.flatten(1).nonzero(as_tuple=True)
            concept = masks.flatten(1)[img[pair], pixel]
            on_unit = unit[pair]
            self.on += torch.bincount(on_unit, minlength=c).cpu()
            counts = torch.bincount(on_unit * k1 + concept, minlength=c * k1)
            self.intersection += counts.view(c, k1).cpu()

    def merge(self, other: IoUTally) -> None:
        """Add ``other``'s counts: integers, so shards merge exactly, in any order. (Not in
        place: either may have been counted under ``inference_mode``.)"""
        self.intersection = self.intersection + other.intersection
        self.on = self.on + other.on
        self.area = self.area + other.area


def tally_to_json(tally: IoUTally) -> dict[str, list]:
    return {
        "intersection": tally.intersection.tolist(),
        "on": tally.on.tolist(),
        "area": tally.area.tolist(),
    }


def tally_from_json(data: dict[str, list]) -> IoUTally:
    intersection = torch.tensor(data["intersection"], dtype=torch.long)
    tally = IoUTally(intersection.shape[0], intersection.shape[1] - 1)
    tally.intersection = intersection
    tally.on = torch.tensor(data["on"], dtype=torch.long)
    tally.area = torch.tensor(data["area"], dtype=torch.long)
    return tally


def iou(tally: IoUTally) -> torch.Tensor:
    """``(C, K) float64``: per unit and concept, on ∧ concept over on ∨ concept (0 where
    both are empty)."""
    inter = tally.intersection[:, 1:].double()
    union = tally.on[:, None].double() + tally.area[None, 1:].double() - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def count_ious(
    items: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor, int]],
    thresholds_by_layer: dict[str, np.ndarray],
    concepts: int,
    *,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, IoUTally]:
    """Per layer, the IoU counts of its units at their thresholds ``(C,) float64`` from
    ``(maps {layer: (n, C, h, w)}, masks (n, H, W), images of the batch)`` items."""
    tallies: dict[str, IoUTally] = {}
    limits = {name: float32_below(t) for name, t in thresholds_by_layer.items()}
    for by_layer, masks, images in items:
        for name, maps in by_layer.items():
            if name not in tallies:
                tallies[name] = IoUTally(maps.shape[1], concepts)
            if maps.shape[0]:
                tallies[name].update(maps.to(device), masks, limits[name])
        if on_batch is not None:
            on_batch(images)
    return tallies


def second_pass(
    index: LayerIndex,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    layers: Sequence[str],
    thresholds_by_layer: dict[str, np.ndarray],
    concepts: int,
    *,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, IoUTally]:
    """One forward over ``(x, index, ok, mask, mask_ok)`` batches (see
    :class:`cnnviz.data.loader.MaskedInputs`): per layer, the IoU counts of its units at
    their thresholds ``(C,) float64``. Images without a good mask are left out."""
    infos = {info.name: info for info in index.usable(layers)}

    def items() -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int]]:
        for x, image_index, ok, masks, mask_ok in batches:
            keep = ok.bool() & mask_ok.bool()
            by_layer: dict[str, torch.Tensor] = {}
            if keep.any():
                outputs = index.capture(x[keep].to(device, non_blocking=True), layers)
                by_layer = {name: unit_maps(outputs[name], infos[name]) for name in layers}
            yield by_layer, masks[keep], int(image_index.shape[0])

    with torch.inference_mode():
        return count_ious(items(), thresholds_by_layer, concepts, device=device, on_batch=on_batch)


class MapCache:
    """The first pass's unit maps and concept masks on a temporary file, read back batch by
    batch for the counts: the second pass then neither decodes an image nor runs the model
    again. Memory holds one batch; the file is gone when the cache is closed.

    Maps are kept as float32, the very values the thresholds were taken from.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        # Per batch: its images, and per array (a layer's maps, then the masks) its shape.
        self._entries: list[tuple[int, list[tuple[str, tuple[int, ...], np.dtype]]]] = []

    def add(self, maps: dict[str, torch.Tensor], masks: torch.Tensor, images: int) -> None:
        """``maps {layer: (n, C, h, w)}`` and ``masks (n, H, W)`` of one batch of ``images``."""
        arrays = [(name, m.detach().float().cpu().numpy()) for name, m in maps.items()]
        arrays.append(("", masks.cpu().numpy()))
        for _, array in arrays:
            self._file.write(np.ascontiguousarray(array).tobytes())
        self._entries.append((images, [(n, a.shape, a.dtype) for n, a in arrays]))

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int]]:
        self._file.seek(0)
        for images, arrays in self._entries:
            read = {
                name: torch.from_numpy(
                    np.fromfile(self._file, dtype, math.prod(shape)).reshape(shape)
                )
                for name, shape, dtype in arrays
            }
            masks = read.pop("")
            yield read, masks, images

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dissection_tiles(
    pixels: torch.Tensor,
    maps: torch.Tensor,
    threshold: float | None,
    concept: torch.Tensor | None,
) -> torch.Tensor:
    """Tiles ``(N, 3, H, W)`` float32 in [0, 1]: each image with what the unit sees in it.

    ``pixels`` ``(N, C, H, W)`` in [0, 1] (grey is shown as RGB); ``maps`` ``(N, h, w)`` the
    unit's maps, upsampled bilinearly (``align_corners=False``) and binarised ``> threshold``
    (None: at half each image's maximum, as the exemplar mask view does). Outside that
    region the image is darkened, its border drawn white; ``concept`` ``(N, H, W)`` bool,
    the label's concept mask, is tinted red.
    """
    rgb = pixels.float().expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels.float()
    h, w = rgb.shape[2:]
    up = F.interpolate(maps[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    if threshold is None:
        peak = up.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        on = (up >= 0.5 * peak) & (up > 0)
    else:
        on = up > float(np.float32(threshold))
    on_f = on.float()  # (N, 1, H, W)
    inner = -F.max_pool2d(-on_f, kernel_size=3, stride=1, padding=1)  # eroded
    border = (on_f - inner).clamp(0, 1)
    out = rgb * (0.3 + 0.7 * on_f)
    if concept is not None:
        red = torch.tensor([1.0, 0.15, 0.15]).view(1, 3, 1, 1)
        tint = concept[:, None].float() * 0.45
        out = out * (1 - tint) + red * tint
    return (out * (1 - border) + border).clamp(0, 1)
