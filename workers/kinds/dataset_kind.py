"""Kinds that run over a data set (exemplars, dissection): its cut into shards, a shard's
progress and partial, and what the partials add up to in the result."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from cnnviz.data.datasets import Dataset
from cnnviz.exemplars import TopK
from cnnviz.layers import LayerInfo
from cnnviz.models import LoadedModel
from schemas.exemplars import DatasetJobOptions, Exemplar
from schemas.jobs import Progress
from workers.kinds.base import JobContext, JobKind, Partial, Resources, ResultT

__all__ = ["DatasetJobKind", "DatasetShard", "MergedShards", "top_exemplars", "unit_shape"]

DatasetRequestT = TypeVar("DatasetRequestT", bound=DatasetJobOptions)


@dataclass
class DatasetShard:
    """One shard of a data-set job as it runs: the model, the data set and the shard's
    images, the images that could not be read, and progress in images out of ``total``."""

    loaded: LoadedModel
    dataset: Dataset
    indices: range
    context: JobContext
    total: int
    # Wall clock: shards may run on different machines.
    started_at: float = field(default_factory=time.time)
    skipped: list[int] = field(default_factory=list)
    done: int = 0

    def on_batch(self, images: int) -> None:
        """``images`` more are done: stop here if the job must, report progress when due."""
        self.done += images
        self.context.check()
        if self.context.progress_due(self.done == self.total):
            self.context.report(Progress(step=self.done, total=self.total, unit="images"))

    def skip_unread(self, index: torch.Tensor, ok: torch.Tensor) -> None:
        """Note the images of a batch that could not be read (``ok`` false)."""
        self.skipped.extend(int(i) for i in index[~ok.bool()])

    def partial(self, **found: Any) -> Partial:
        """The shard's partial: what the kind ``found``, with the images read and skipped,
        the device and the start."""
        return {
            "images": len(self.indices) - len(self.skipped),
            "skipped": self.skipped,
            **found,
            "device": str(self.loaded.device),
            "started_at": self.started_at,
        }


@dataclass(frozen=True)
class MergedShards:
    """What the partials of a data-set job's shards (:meth:`DatasetShard.partial`) add up to,
    beside what its kind found."""

    partials: list[Partial]
    dataset: Dataset

    @property
    def images(self) -> int:
        """The images read."""
        return sum(int(p["images"]) for p in self.partials)

    def result_fields(self, listed: int) -> dict[str, Any]:
        """The result's images read and skipped (the first ``listed`` skipped by id), shards,
        device, and time from the first shard's start to now, the end of the merge."""
        skipped = sorted(i for p in self.partials for i in p["skipped"])
        partials = self.partials
        return {
            "images": self.images,
            "skipped": len(skipped),
            "skipped_images": [self.dataset.ids[i] for i in skipped[:listed]],
            "shards": len(partials),
            "device": str(partials[0]["device"]) if partials else "",
            "elapsed_s": round(time.time() - min(float(p["started_at"]) for p in partials), 4)
            if partials
            else 0.0,
        }


class DatasetJobKind(JobKind[DatasetRequestT, ResultT]):
    """A kind that runs over a data set (``request.dataset``) cut into shards of
    ``Resources.shard_images`` consecutive images, for some ``request.layers``; its work counts
    images. Its pictures are a unit's, drawn at ``GET /v1/jobs/{id}/<its route's
    path>/{layer}/{channel}``."""

    progress_unit = "images"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.pictures_elsewhere = f"GET /v1/jobs/{{id}}/{cls.route.path}/{{layer}}/{{channel}}"

    def _dataset(self, request: DatasetRequestT, resources: Resources) -> Dataset:
        return resources.datasets.get(request.dataset)

    def prepare(
        self, request: DatasetRequestT, model: str, resources: Resources
    ) -> DatasetRequestT:
        """The request with its layers by name, each one usable: an unknown layer, one not
        batch-first or one of ambiguous axes is refused now, never failed later (units are
        channels or features, maps the spatial grid, whatever the layer's axes); an unknown
        or empty data set too."""
        layers = [info.name for info in resources.model(model).index.usable(request.layers)]
        self._dataset(request, resources)
        return request.model_copy(update={"layers": layers})

    def shards(self, request: DatasetRequestT, model: str, resources: Resources) -> int:
        images = len(self._dataset(request, resources))
        return max(1, math.ceil(images / resources.shard_images))

    def work(self, request: DatasetRequestT, model: str, resources: Resources) -> int:
        return len(self._dataset(request, resources))

    def _shard(
        self,
        request: DatasetRequestT,
        model: str,
        shard: int,
        resources: Resources,
        context: JobContext,
        passes: int = 1,
    ) -> DatasetShard:
        """Shard ``shard`` starting, its progress counting ``passes`` passes over its images."""
        loaded = resources.model(model)
        dataset = self._dataset(request, resources)
        indices = resources.shard_indices(shard, len(dataset))
        return DatasetShard(loaded, dataset, indices, context, passes * len(indices))


def unit_shape(info: LayerInfo) -> list[int]:
    """A layer's shape as a data-set job's result gives it: unit-first (a vector's own shape,
    else its map's)."""
    return list(info.shape if info.axes == "vector" else info.map_shape or ())


def top_exemplars(top: TopK, channel: int, dataset: Dataset) -> list[Exemplar]:
    """The images a top-k kept for ``channel``, best first, by id (empty slots left out)."""
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
