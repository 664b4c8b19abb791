"""The dissection kind: a label and a score for every unit of some layers, from a data set.

Two passes (see ``docs/dissection.md``). The first is the exemplar pass, cut into shards of
consecutive images as the exemplars kind cuts it: each shard keeps its units' top-k images,
their exact top activations (enough for the ``1 - quantile`` quantile) and per-label sums;
all three merge associatively, so the thresholds equal one process's whatever the cut. The
``masks`` method then needs those thresholds over the whole data set before it can count a
pixel. A job of one shard keeps its first pass's maps and masks on a temporary file
(:class:`~cnnviz.dissection.MapCache`) and counts from it, with progress and cancellation:
no image is decoded twice, no forward runs twice. A job of several shards counts in the
merge, once every shard's thresholds are in, shard by shard over the same cut, the counts
added exactly (integers), so that any cut gives the same labels and IoUs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cnnviz.data.datasets import Dataset
from cnnviz.data.loader import MaskedInputs, ModelInputs
from cnnviz.dissection import (
    IoUTally,
    LabelSums,
    LayerPass,
    MapCache,
    TopValues,
    count_ious,
    first_pass,
    iou,
    second_pass,
    tally_from_json,
    tally_to_json,
    thresholds,
    top_values_needed,
)
from cnnviz.errors import InvalidArgumentError
from cnnviz.exemplars import TopK
from cnnviz.mis import Extremes
from schemas.dissection import (
    ROUTE,
    Alternative,
    DissectionCreate,
    DissectionLayer,
    DissectionResult,
    DissectionUnit,
)
from workers.kinds import dissection_mis
from workers.kinds.base import JobContext, Partial, Resources
from workers.kinds.dataset_kind import DatasetJobKind, MergedShards, top_exemplars, unit_shape
from workers.kinds.registry import register_kind

__all__ = ["Dissection"]

_LISTED = 100
_ALTERNATIVES = 3
_PRECISION_BAR = 0.5  # labels: a unit whose top-k is at least half one label detects it
# A one-shard job's maps are cached on disk up to this size, else computed again: 2,048
# images of ResNet18's layer4 at 224 px and their masks take 0.3 GiB.
_CACHE_BYTES = 4 << 30


def _map_size(shape: tuple[int, ...]) -> int:
    """Positions of a unit's map for a layer shape without the batch (see ``unit_maps``)."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1


@register_kind
class Dissection(DatasetJobKind[DissectionCreate, DissectionResult]):
    """Units labelled by IoU with concept masks or by precision@k of labels; progress in
    images of the first pass."""

    route = ROUTE

    def prepare(
        self, request: DissectionCreate, model: str, resources: Resources
    ) -> DissectionCreate:
        request = super().prepare(request, model, resources)
        dataset = self._dataset(request, resources)
        method = request.method or ("masks" if dataset.has_masks else "labels")
        if method == "masks" and not dataset.has_masks:
            raise InvalidArgumentError(
                f"dataset {dataset.name!r} has no concept masks; use method 'labels' or a "
                "dataset with `masks` and `concepts`",
                listing=("datasets",),
            )
        if method == "labels" and not dataset.labels:
            raise InvalidArgumentError(
                f"dataset {dataset.name!r} has no labels (an ImageFolder tree root/<label>/x); "
                "use method 'masks' or a labelled dataset",
                listing=("datasets",),
            )
        update: dict[str, Any] = {"method": method}
        if request.mis or request.mis_encoder:
            update["mis_encoder"] = dissection_mis.encoder(request, model, resources)
        return request.model_copy(update=update)

    def _counts_in_shard(self, request: DissectionCreate, model: str, resources: Resources) -> bool:
        """Whether the shard itself makes the second pass: a ``masks`` job of one shard."""
        return request.method == "masks" and self.shards(request, model, resources) == 1

    def work(self, request: DissectionCreate, model: str, resources: Resources) -> int:
        images = super().work(request, model, resources)
        return 2 * images if self._counts_in_shard(request, model, resources) else images

    def run_shard(
        self,
        request: DissectionCreate,
        model: str,
        shard: int,
        resources: Resources,
        context: JobContext,
    ) -> Partial:
        in_shard = self._counts_in_shard(request, model, resources)
        run = self._shard(request, model, shard, resources, context, 2 if in_shard else 1)
        loaded, dataset, indices = run.loaded, run.dataset, run.indices
        cached = in_shard and self._cache_bytes(request, loaded, len(indices)) <= _CACHE_BYTES
        inputs = MaskedInputs if cached else ModelInputs
        batches = resources.batches(loaded, dataset, indices, inputs)
        bad_masks: list[int] = []

        with MapCache() if cached else contextlib.nullcontext() as cache:
            current: list[Any] = []

            def counted() -> Any:
                for batch in batches:
                    x, index, ok = batch[:3]
                    run.skip_unread(index, ok)
                    if cache is not None:
                        current[:] = batch
                        bad_masks.extend(int(i) for i in index[ok.bool() & ~batch[4].bool()])
                        if not ok.any():  # first_pass sees no map of this batch
                            cache.add({}, batch[3][:0], len(index))
                    yield x, index, ok

            def keep_maps(maps: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
                assert cache is not None
                _, index, _, masks, mask_ok = current
                good = mask_ok.bool()[keep]
                if good.all():  # the usual batch: no copy of its maps
                    cache.add(maps, masks[keep], len(index))
                    return
                kept = {name: m[good.to(m.device)] for name, m in maps.items()}
                cache.add(kept, masks[keep][good], len(index))

            def top_m(layer: str, shape: tuple[int, ...]) -> int:
                # Sized for the whole data set, so that any shard keeps all it may contribute.
                return top_values_needed(len(dataset) * _map_size(shape), request.quantile)

            context.check()
            passes = first_pass(
                loaded.index,
                counted(),
                request.layers,
                k=request.k,
                top_m=top_m if request.method == "masks" else None,
                targets=dataset.targets if request.method == "labels" else None,
                labels=len(dataset.labels),
                extremes=dissection_mis.EXTREMES if request.mis else 0,
                device=loaded.device,
                on_batch=run.on_batch,
                on_maps=keep_maps if cache is not None else None,
            )
            counted_here: dict[str, Any] | None = None
            if in_shard and passes:
                limits = _limits(request, passes)
                if cache is not None:
                    concepts = len(dataset.concepts)
                    tallies = count_ious(
                        cache, limits, concepts, device=loaded.device, on_batch=run.on_batch
                    )
                else:
                    tallies = self._second_pass(
                        request, model, resources, limits, bad_masks, indices, run.on_batch
                    )
                counted_here = {
                    "bad_masks": bad_masks,
                    "tallies": {name: tally_to_json(t) for name, t in tallies.items()},
                }
        return run.partial(
            second_pass=counted_here,
            layers={
                name: {
                    "top": entry.top.to_json(),
                    "values": entry.values.to_json() if entry.values is not None else None,
                    "labels": entry.labels.to_json() if entry.labels is not None else None,
                    "extremes": entry.extremes.to_json() if entry.extremes is not None else None,
                }
                for name, entry in passes.items()
            },
        )

    @staticmethod
    def _cache_bytes(request: DissectionCreate, loaded: Any, images: int) -> int:
        """Disk that ``images`` images' maps (float32) and masks (uint8) take."""
        per_image = math.prod(loaded.spec.input_size)
        for name in request.layers:
            info = loaded.index.info(name)
            per_image += 4 * math.prod(info.map_shape or info.shape)
        return images * per_image

    def merge(
        self,
        request: DissectionCreate,
        model: str,
        partials: list[Partial],
        resources: Resources,
    ) -> DissectionResult:
        loaded = resources.model(model)
        dataset = self._dataset(request, resources)
        merged = _merge_passes(request, partials)
        shards = MergedShards(partials, dataset)
        bad_masks: list[int] = []
        limits = _limits(request, merged)
        tallies: dict[str, IoUTally] = {}
        counted = partials[0].get("second_pass") if len(partials) == 1 else None
        if counted:
            bad_masks = list(counted["bad_masks"])
            tallies = {name: tally_from_json(t) for name, t in counted["tallies"].items()}
        elif request.method == "masks" and merged:
            for shard in range(len(partials)):  # the first pass's cut, counts added exactly
                indices = resources.shard_indices(shard, len(dataset))
                part = self._second_pass(request, model, resources, limits, bad_masks, indices)
                for name, tally in part.items():
                    if name in tallies:
                        tallies[name].merge(tally)
                    else:
                        tallies[name] = tally
        mis = (
            dissection_mis.unit_scores(request, merged, shards.images, resources)
            if request.mis
            else {}
        )
        layers = []
        for name in request.layers:
            shape = unit_shape(loaded.index.info(name))  # unit-first, as exemplars give it
            entry = merged.get(name)
            if entry is None:  # no image could be read
                units: list[DissectionUnit] = []
            elif request.method == "masks":
                units = _mask_units(entry, tallies.get(name), limits[name], dataset)
            else:
                units = _label_units(entry, dataset)
            if name in mis:
                units = [
                    u.model_copy(update={"mis": m}) for u, m in zip(units, mis[name], strict=True)
                ]
            bar = (
                (lambda s: s > request.iou_threshold)
                if request.method == "masks"
                else (lambda s: s >= _PRECISION_BAR)
            )
            detecting = [u for u in units if u.label is not None and bar(u.score)]
            layers.append(
                DissectionLayer(
                    name=name,
                    shape=shape,
                    detectors=len(detecting),
                    unique_concepts=len({u.label for u in detecting}),
                    units=units,
                )
            )
        return DissectionResult(
            model=model,
            dataset=request.dataset,
            method=request.method or "labels",
            skipped_masks=len(bad_masks),
            skipped_mask_images=[dataset.ids[i] for i in sorted(bad_masks)[:_LISTED]],
            quantile=request.quantile,
            iou_threshold=request.iou_threshold,
            k=request.k,
            mis_encoder=request.mis_encoder,
            layers=layers,
            **shards.result_fields(_LISTED),
        )

    def _second_pass(
        self,
        request: DissectionCreate,
        model: str,
        resources: Resources,
        limits: dict[str, np.ndarray],
        bad_masks: list[int],
        indices: range,
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[str, IoUTally]:
        """The counts over images ``indices``, a forward again (bad masks added to
        ``bad_masks``)."""
        loaded = resources.model(model)
        dataset = self._dataset(request, resources)
        batches = resources.batches(loaded, dataset, indices, MaskedInputs)

        def counted() -> Any:
            for x, index, ok, mask, mask_ok in batches:
                bad_masks.extend(int(i) for i in index[ok.bool() & ~mask_ok.bool()])
                yield x, index, ok, mask, mask_ok

        return second_pass(
            loaded.index,
            counted(),
            request.layers,
            limits,
            len(dataset.concepts),
            device=loaded.device,
            on_batch=on_batch,
        )


def _limits(request: DissectionCreate, passes: dict[str, LayerPass]) -> dict[str, np.ndarray]:
    """Each ``masks`` layer's thresholds T ``(C,) float64``."""
    return {
        name: thresholds(entry.values, request.quantile)
        for name, entry in passes.items()
        if entry.values is not None
    }


def _merge_passes(request: DissectionCreate, partials: list[Partial]) -> dict[str, LayerPass]:
    """The shards' first passes as one, in shard order (each merge is exact)."""
    merged: dict[str, LayerPass] = {}
    for partial in partials:
        for name, lists in partial["layers"].items():
            top = TopK.from_json(lists["top"], request.k, True)
            values = lists["values"]
            labels = lists["labels"]
            extremes = lists.get("extremes")
            entry = LayerPass(
                top,
                TopValues.from_json(values) if values else None,
                LabelSums.from_json(labels) if labels else None,
                Extremes.from_json(extremes) if extremes else None,
            )
            if name not in merged:
                merged[name] = entry
                continue
            into = merged[name]
            into.top.merge(entry.top)
            if into.values is not None and entry.values is not None:
                into.values.merge(entry.values)
            if into.labels is not None and entry.labels is not None:
                into.labels.merge(entry.labels)
            if into.extremes is not None and entry.extremes is not None:
                into.extremes.merge(entry.extremes)
    return merged


def _ranked(scores: list[float], names: list[str]) -> list[Alternative]:
    """Names by score, high to low; ties to the lower index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [Alternative(label=names[i], score=scores[i]) for i in order[: 1 + _ALTERNATIVES]]


def _mask_units(
    entry: LayerPass, tally: IoUTally | None, limit: np.ndarray, dataset: Dataset
) -> list[DissectionUnit]:
    channels = entry.top.scores.shape[0]
    scores = iou(tally) if tally is not None else torch.zeros((channels, len(dataset.concepts)))
    units = []
    for c in range(channels):
        ranked = _ranked(scores[c].tolist(), dataset.concepts)
        threshold = float(limit[c])
        units.append(
            DissectionUnit(
                channel=c,
                label=ranked[0].label,
                score=ranked[0].score,
                activation_threshold=threshold if math.isfinite(threshold) else None,
                selectivity=None,
                alternatives=ranked[1:],
                top=top_exemplars(entry.top, c, dataset),
            )
        )
    return units


def _selectivity(means: torch.Tensor) -> float | None:
    """Morcos et al.'s class selectivity of one unit's per-label means ``(L,)`` (NaN: a label
    with no image): ``(μ_max − μ_rest) / (μ_max + μ_rest)`` over ReLU'd means, where μ_max is
    the highest label mean and μ_rest the mean of the others; None where that is 0 / 0."""
    present = means[~means.isnan()].clamp_min(0.0)
    if present.numel() < 2:
        return None
    best_at = int(present.argmax())
    best = float(present[best_at])
    rest = float(torch.cat([present[:best_at], present[best_at + 1 :]]).mean())
    return (best - rest) / (best + rest) if best + rest > 0 else None


def _label_units(entry: LayerPass, dataset: Dataset) -> list[DissectionUnit]:
    channels = entry.top.scores.shape[0]
    means = entry.labels.means() if entry.labels is not None else None
    units = []
    for c in range(channels):
        top = top_exemplars(entry.top, c, dataset)
        counts = [0] * len(dataset.labels)
        for e in top:
            target = dataset.targets[dataset.position(e.image)]
            if target >= 0:
                counts[target] += 1
        precision = [n / len(top) if top else 0.0 for n in counts]
        ranked = _ranked(precision, dataset.labels)
        units.append(
            DissectionUnit(
                channel=c,
                label=ranked[0].label if top else None,
                score=ranked[0].score,
                activation_threshold=None,
                selectivity=_selectivity(means[c]) if means is not None else None,
                alternatives=ranked[1:],
                top=top,
            )
        )
    return units
