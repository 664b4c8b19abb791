"""Renders of a finished dissection job: one unit's top images with its mask and its label's."""

from __future__ import annotations

import base64

import torch

from cnnviz.axes import unit_maps
from cnnviz.data.datasets import DatasetRegistry
from cnnviz.data.loader import MaskedInputs
from cnnviz.dissection import dissection_tiles
from cnnviz.errors import InvalidArgumentError
from cnnviz.imaging import encode_png, image_grid
from cnnviz.models import ModelRegistry
from schemas.dissection import DissectionGridRead, DissectionResult, DissectionUnit
from service.exemplars import pick_unit


def find_unit(result: DissectionResult, layer: str, channel: int) -> DissectionUnit:
    """The unit of the result, with top images; the core's errors (4xx) for a layer or
    channel it lacks. Cheap: checked before drawing."""
    units = {entry.name: entry.units for entry in result.layers}
    unit = pick_unit(units, result.model, layer, channel, "units")
    if not unit.top:
        raise InvalidArgumentError(f"unit {channel} of layer {layer!r} has no top images")
    return unit


def render(
    models: ModelRegistry,
    datasets: DatasetRegistry,
    result: DissectionResult,
    layer: str,
    channel: int,
    unit: DissectionUnit,
) -> tuple[bytes, DissectionGridRead]:
    """The PNG grid of ``unit``'s top images (:func:`find_unit`): its binarised mask (at T
    for ``masks``) and the concept mask of its label, where the data set has masks."""
    loaded = models.get(result.model)
    dataset = datasets.get(result.dataset)
    spec = loaded.spec
    inputs = MaskedInputs(
        dataset,
        [dataset.position(e.image) for e in unit.top],
        size=spec.input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
    )
    items = [inputs[i] for i in range(len(inputs))]
    x = torch.stack([item[0] for item in items])
    concept = None
    if dataset.has_masks and unit.label in dataset.concepts:
        value = dataset.concepts.index(unit.label) + 1
        concept = torch.stack([item[3] == value for item in items])
    with torch.inference_mode():
        out = loaded.index.capture(x.to(loaded.device), [layer])[layer]
    maps = unit_maps(out, loaded.index.info(layer))[:, channel].float().cpu()
    pixels = spec.denormalize(x)
    tiles = dissection_tiles(pixels, maps, unit.activation_threshold, concept)
    grid, layout = image_grid(tiles, columns=min(8, len(unit.top)))
    png = encode_png(grid)
    read = DissectionGridRead(
        layer=layer,
        channel=channel,
        label=unit.label,
        score=unit.score,
        images=[e.image for e in unit.top],
        columns=layout.columns,
        tile_size=[int(tiles.shape[2]), int(tiles.shape[3])],
        png=base64.b64encode(png).decode("ascii"),
    )
    return png, read
