"""The exemplars kind: the data set's images that each channel of some layers responds to most.

The data set is cut into shards of consecutive images (``Resources.shard_images``); each
shard streams its images through the model once, truncated at the deepest requested layer,
and keeps a top-k per channel (:func:`cnnviz.exemplars.mine`). The merge concatenates the
shards' lists and takes the top k again, so the result does not depend on how the data set
was cut, nor on which worker ran which shard.
"""

from __future__ import annotations

import time
from typing import Any

from cnnviz.data.datasets import Dataset
from cnnviz.exemplars import LayerTopK, TopK, mine
from schemas.exemplars import (
    ROUTE,
    Exemplar,
    ExemplarLayer,
    ExemplarsCreate,
    ExemplarsResult,
    ExemplarUnit,
)
from schemas.jobs import Progress
from workers.kinds.base import DatasetJobKind, JobContext, Partial, Resources
from workers.kinds.registry import register_kind

__all__ = ["Exemplars"]

_SKIPPED_LISTED = 100


@register_kind
class Exemplars(DatasetJobKind[ExemplarsCreate, ExemplarsResult]):
    """Top-k (and bottom-k) images per channel, mined in shards; progress in images."""

    name = "exemplar"
    route = ROUTE
    pictures_elsewhere = "GET /v1/jobs/{id}/exemplars/{layer}/{channel}"
    request_type = ExemplarsCreate
    result_type = ExemplarsResult

    def prepare(
        self, request: ExemplarsCreate, model: str, resources: Resources
    ) -> ExemplarsCreate:
        loaded = resources.model(model)
        # Unknown, not batch-first, or ambiguous axes: refused now, never failed later.
        layers = [info.name for info in loaded.index.usable(request.layers)]
        resources.datasets.get(request.dataset)  # unknown or empty: refused now
        return request.model_copy(update={"layers": layers})

    def run_shard(
        self,
        request: ExemplarsCreate,
        model: str,
        shard: int,
        resources: Resources,
        context: JobContext,
    ) -> Partial:
        loaded = resources.model(model)
        dataset = self._dataset(request, resources)
        indices = resources.shard_indices(shard, len(dataset))
        batches = resources.batches(loaded, dataset, indices)
        started_at = time.time()  # wall clock: shards may run on different machines
        done = 0
        skipped: list[int] = []

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            context.check()
            last = done == len(indices)
            if context.progress_due(last):
                context.report(Progress(step=done, total=len(indices), unit="images"))

        def counted() -> Any:
            for x, index, ok in batches:
                skipped.extend(int(i) for i in index[~ok.bool()])
                yield x, index, ok

        context.check()
        tops = mine(
            loaded.index,
            counted(),
            request.layers,
            k=request.k,
            how=request.pool,
            bottom=request.bottom,
            device=loaded.device,
            on_batch=on_batch,
        )
        return {
            "images": len(indices) - len(skipped),
            "skipped": skipped,
            "layers": {
                name: {
                    "top": top.top.to_json(),
                    "bottom": top.bottom.to_json() if top.bottom is not None else None,
                }
                for name, top in tops.items()
            },
            "device": str(loaded.device),
            "started_at": started_at,
        }

    def merge(
        self,
        request: ExemplarsCreate,
        model: str,
        partials: list[Partial],
        resources: Resources,
    ) -> ExemplarsResult:
        loaded = resources.model(model)
        dataset = self._dataset(request, resources)
        merged: dict[str, LayerTopK] = {}
        for partial in partials:
            for name, lists in partial["layers"].items():
                top = TopK.from_json(lists["top"], request.k, True)
                bottom = (
                    TopK.from_json(lists["bottom"], request.k, False)
                    if lists["bottom"] is not None
                    else None
                )
                if name not in merged:
                    merged[name] = LayerTopK(top, bottom)
                    continue
                merged[name].top.merge(top)
                if bottom is not None and merged[name].bottom is not None:
                    merged[name].bottom.merge(bottom)  # type: ignore[union-attr]
        skipped = sorted(i for p in partials for i in p["skipped"])
        layers = []
        for name in request.layers:
            info = loaded.index.info(name)
            shape = list(info.shape if info.axes == "vector" else info.map_shape or ())
            top_k = merged.get(name)
            units = []
            channels = info.units or shape[0]
            for channel in range(channels):
                units.append(
                    ExemplarUnit(
                        channel=channel,
                        top=_exemplars(top_k.top, channel, dataset) if top_k else [],
                        bottom=(
                            _exemplars(top_k.bottom, channel, dataset)
                            if top_k and top_k.bottom is not None
                            else None
                        ),
                    )
                )
            layers.append(ExemplarLayer(name=name, shape=shape, units=units))
        return ExemplarsResult(
            model=model,
            dataset=request.dataset,
            images=sum(int(p["images"]) for p in partials),
            skipped=len(skipped),
            skipped_images=[dataset.ids[i] for i in skipped[:_SKIPPED_LISTED]],
            pool=request.pool,
            k=request.k,
            layers=layers,
            shards=len(partials),
            device=str(partials[0]["device"]) if partials else "",
            # From the first shard's start to the end of the merge.
            elapsed_s=round(time.time() - min(float(p["started_at"]) for p in partials), 4)
            if partials
            else 0.0,
        )


def _exemplars(top: TopK, channel: int, dataset: Dataset) -> list[Exemplar]:
    return [
        Exemplar(image=dataset.ids[int(i)], score=float(s), position=[int(v) for v in p])
        for s, i, p in zip(
            top.scores[channel].tolist(),
            top.index[channel].tolist(),
            top.position[channel].tolist(),
            strict=True,
        )
        if i >= 0
    ]
