"""The MIS step of a dissection job (``"mis": true``): the encoder it names or its default,
and each unit's score from the merged first pass.

The first pass keeps each unit's most and least activating images
(:class:`cnnviz.mis.Extremes`, merged exactly across shards); the merge embeds the union of
those images once with the encoder and scores every unit (:func:`cnnviz.mis.scores`).
"""

from __future__ import annotations

from cnnviz.dissection import LayerPass
from cnnviz.errors import InvalidArgumentError, UnknownLayerError, UnknownModelError
from cnnviz.mis import QUERIES, REFERENCES, Embeddings, default_encoder_layer, embed, scores
from schemas.dissection import DissectionCreate, MisEncoder
from workers.kinds.base import Resources

__all__ = ["EXTREMES", "encoder", "unit_scores"]

EXTREMES = REFERENCES + QUERIES  # images kept from each end of every unit's ranking


def encoder(request: DissectionCreate, model: str, resources: Resources) -> MisEncoder:
    """The request's encoder, checked (unknown model or layer: a 4xx), or the default: the
    dissected model's penultimate layer. An encoder without ``mis`` is a mistake: a 4xx."""
    if not request.mis:
        raise InvalidArgumentError('mis_encoder names the encoder of the MIS; add "mis": true')
    chosen = request.mis_encoder or MisEncoder(
        model=model, layer=default_encoder_layer(resources.model(model).index)
    )
    try:
        resources.model(chosen.model).index.usable([chosen.layer])
    except (UnknownModelError, UnknownLayerError) as error:
        # A name in the body, not the path: the request is wrong (422), nothing is missing.
        raise InvalidArgumentError(f"mis_encoder: {error}", listing=error.listing) from error
    return chosen


def unit_scores(
    request: DissectionCreate, merged: dict[str, LayerPass], images: int, resources: Resources
) -> dict[str, list[float | None]]:
    """Per layer, each unit's MIS (``request.mis_encoder`` is set by ``prepare``)."""
    chosen = request.mis_encoder
    assert chosen is not None
    wanted = sorted(
        {i for entry in merged.values() if entry.extremes for i in entry.extremes.images()}
    )
    if not wanted:
        return {}
    loaded = resources.model(chosen.model)
    dataset = resources.datasets.get(request.dataset)
    batches = resources.batches(loaded, dataset, wanted)
    embeddings: Embeddings = embed(loaded.index, chosen.layer, batches, loaded.device)
    return {
        name: scores(entry.extremes, images, embeddings)
        for name, entry in merged.items()
        if entry.extremes is not None
    }
