"""An optimization's patterns against a data set (``exemplars_job``): each pattern's activation
next to the unit's top exemplar, and where it would rank among the data set's images.

When the job is queued, :func:`dataset_scores` copies the named exemplars or dissection job's
stored top-k scores of the optimized units into the request (``dataset_scores``); when it has
run, :func:`versus` scores the patterns with that job's pooling (:func:`cnnviz.versus.
pooled_scores`) and compares. No data set is read: only the top-k a job kept.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.exemplars import Pool
from cnnviz.models import LoadedModel
from cnnviz.versus import pooled_scores, rank_among
from schemas.dissection import DissectionResult
from schemas.exemplars import Exemplar, ExemplarsResult
from schemas.jobs import JobRead
from schemas.objectives import OBJECTIVES
from schemas.optimization import (
    DatasetScores,
    ObjectiveKind,
    OptimizationCreate,
    StoredTop,
    VsDataset,
)

__all__ = ["channels_of", "dataset_scores", "versus"]

FIELD = "exemplars_job"
KINDS = ("exemplar", "dissection")


def channels_of(request: OptimizationCreate) -> list[int]:
    """The channel of each optimized unit (``channels`` resolved); 422 for an objective whose
    units are not channels (a whole layer, a direction): nothing to compare them with."""
    kind = request.objective or ObjectiveKind.CHANNEL
    if OBJECTIVES[kind].per_channel and isinstance(request.channels, list):
        return list(request.channels)
    if kind == ObjectiveKind.NEURON and request.neuron is not None:
        return [request.neuron.channel]
    raise InvalidArgumentError(
        f"`{FIELD}` compares each unit's pattern with the unit's top images; objective "
        f"{kind.value!r} optimizes no single unit: use 'channel', 'class_logit' or 'neuron'"
    )


def _layer_tops(job: JobRead[Any, Any], layer: str) -> tuple[Pool, list[list[Exemplar]]]:
    """The pooling of ``job`` and each unit's top list of ``layer``; 422 for a job without it."""
    result = job.result
    assert isinstance(result, ExemplarsResult | DissectionResult)
    # A dissection ranks its top images by their mean activation.
    pool: Pool = result.pool if isinstance(result, ExemplarsResult) else "mean"
    found = next((entry for entry in result.layers if entry.name == layer), None)
    if found is None:
        names = ", ".join(entry.name for entry in result.layers)
        raise InvalidArgumentError(
            f"`{FIELD}` job {job.id!r} did not score layer {layer!r} (it has {names}); name "
            "a job of that layer, or start one"
        )
    return pool, [unit.top for unit in found.units]


def dataset_scores(
    request: OptimizationCreate, model: str, job: JobRead[Any, Any], loaded: LoadedModel
) -> DatasetScores:
    """What the prepared ``request``'s patterns are compared with: the optimized units' top-k
    of ``job`` (a succeeded exemplars or dissection job of the caller). 422 for a job of
    another model or layer, or one that scored no image."""
    if job.model != model:
        raise InvalidArgumentError(
            f"`{FIELD}` job {job.id!r} is of model {job.model!r}, not {model!r}"
        )
    layer = loaded.index.info(request.layer).name
    pool, tops = _layer_tops(job, layer)
    result = job.result
    assert isinstance(result, ExemplarsResult | DissectionResult)
    if result.images == 0:
        raise InvalidArgumentError(f"`{FIELD}` job {job.id!r} scored no image of its data set")
    units = []
    for channel in dict.fromkeys(channels_of(request)):
        top = tops[channel] if channel < len(tops) else []
        units.append(
            StoredTop(
                channel=channel,
                top_image=top[0].image if top else None,
                scores=[exemplar.score for exemplar in top],
            )
        )
    return DatasetScores(
        job=job.id, dataset=result.dataset, pool=pool, images=result.images, units=units
    )


def versus(
    request: OptimizationCreate, images: torch.Tensor, loaded: LoadedModel
) -> list[VsDataset | None]:
    """Each optimized image ``(N, C, S, S)`` float32 in [0, 1] against the data set of
    ``request.dataset_scores``, in the result's order (``images_per_unit`` per unit)."""
    stored = request.dataset_scores
    assert stored is not None
    spec = loaded.spec
    scores = pooled_scores(
        loaded.index,
        images,
        request.layer,
        stored.pool,
        mean=spec.mean,
        std=spec.std,
        input_size=spec.input_size,
        device=loaded.device,
    )
    by_channel = {unit.channel: unit for unit in stored.units}
    channels = channels_of(request)
    compared: list[VsDataset | None] = []
    for i in range(images.shape[0]):
        unit = by_channel.get(channels[i // request.images_per_unit])
        if unit is None or not unit.scores:
            compared.append(None)
            continue
        activation = float(scores[i, unit.channel])
        top = unit.scores[0]
        compared.append(
            VsDataset(
                exemplars_job=stored.job,
                dataset=stored.dataset,
                pool=stored.pool,
                activation=activation,
                top_score=top,
                top_image=unit.top_image,
                ratio=activation / top if top > 0 else None,
                rank=rank_among(activation, unit.scores, stored.images),
                top_k=len(unit.scores),
                images=stored.images,
            )
        )
    return compared
