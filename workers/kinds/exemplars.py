"""The exemplars kind: the data set's images that each channel of some layers responds to most.

The data set is cut into shards of consecutive images (``Resources.shard_images``); each
shard streams its images through the model once, truncated at the deepest requested layer,
and keeps a top-k per channel (:func:`cnnviz.exemplars.mine`). The merge concatenates the
shards' lists and takes the top k again, so the result does not depend on how the data set
was cut, nor on which worker ran which shard.
"""

from __future__ import annotations

from typing import Any

from cnnviz.exemplars import LayerTopK, TopK, mine
from schemas.exemplars import ROUTE, ExemplarLayer, ExemplarsCreate, ExemplarsResult, ExemplarUnit
from workers.kinds.base import JobContext, Partial, Resources
from workers.kinds.dataset_kind import DatasetJobKind, MergedShards, top_exemplars, unit_shape
from workers.kinds.registry import register_kind

__all__ = ["Exemplars"]

_SKIPPED_LISTED = 100


@register_kind
class Exemplars(DatasetJobKind[ExemplarsCreate, ExemplarsResult]):
    """Top-k (and bottom-k) images per channel, mined in shards; progress in images."""

    route = ROUTE

    def run_shard(
        self,
        request: ExemplarsCreate,
        model: str,
        shard: int,
        resources: Resources,
        context: JobContext,
    ) -> Partial:
        run = self._shard(request, model, shard, resources, context)
        batches = resources.batches(run.loaded, run.dataset, run.indices)

        def counted() -> Any:
            for x, index, ok in batches:
                run.skip_unread(index, ok)
                yield x, index, ok

        context.check()
        tops = mine(
            run.loaded.index,
            counted(),
            request.layers,
            k=request.k,
            how=request.pool,
            bottom=request.bottom,
            device=run.loaded.device,
            on_batch=run.on_batch,
        )
        return run.partial(
            layers={
                name: {
                    "top": top.top.to_json(),
                    "bottom": top.bottom.to_json() if top.bottom is not None else None,
                }
                for name, top in tops.items()
            }
        )

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
        layers = []
        for name in request.layers:
            info = loaded.index.info(name)
            shape = unit_shape(info)
            top_k = merged.get(name)
            units = []
            channels = info.units or shape[0]
            for channel in range(channels):
                units.append(
                    ExemplarUnit(
                        channel=channel,
                        top=top_exemplars(top_k.top, channel, dataset) if top_k else [],
                        bottom=(
                            top_exemplars(top_k.bottom, channel, dataset)
                            if top_k and top_k.bottom is not None
                            else None
                        ),
                    )
                )
            layers.append(ExemplarLayer(name=name, shape=shape, units=units))
        return ExemplarsResult(
            model=model,
            dataset=request.dataset,
            pool=request.pool,
            k=request.k,
            layers=layers,
            **MergedShards(partials, dataset).result_fields(_SKIPPED_LISTED),
        )
