"""Renders of a finished exemplars job: a grid of one channel's top (or bottom) images."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.errors import InvalidArgumentError, UnknownLayerError
from cnnviz.exemplars import Mode, exemplar_tiles
from cnnviz.imaging import encode_png, image_grid
from cnnviz.models import ModelRegistry
from schemas.exemplars import Exemplar, ExemplarGridRead, ExemplarsResult

UnitT = TypeVar("UnitT")


def pick_unit(
    units: Mapping[str, Sequence[UnitT]], model: str, layer: str, channel: int, noun: str
) -> UnitT:
    """Unit ``channel`` of ``layer`` in a job's ``units`` (per layer name); the core's errors
    (4xx) for a layer or channel the job lacks, naming its ``noun`` ("channels", "units")."""
    found = units.get(layer)
    if found is None:
        raise UnknownLayerError(layer, model, list(units))
    if not 0 <= channel < len(found):
        raise InvalidArgumentError(
            f"channel {channel} is out of range for layer {layer!r}: it has "
            f"{len(found)} {noun} (0..{len(found) - 1})"
        )
    return found[channel]


def find_exemplars(result: ExemplarsResult, layer: str, channel: int, which: str) -> list[Exemplar]:
    """``layer``/``channel``'s ``which`` ('top' or 'bottom') exemplars in the result; the
    core's errors (4xx) for a unit or a list the job lacks. Cheap: checked before drawing."""
    units = {entry.name: entry.units for entry in result.layers}
    unit = pick_unit(units, result.model, layer, channel, "channels")
    exemplars = unit.top if which == "top" else unit.bottom
    if exemplars is None:
        raise InvalidArgumentError(
            'this job kept no bottom exemplars; submit it with "bottom": true'
        )
    if not exemplars:
        raise InvalidArgumentError(f"channel {channel} of layer {layer!r} has no exemplars")
    return exemplars


def render(
    models: ModelRegistry,
    datasets: DatasetRegistry,
    result: ExemplarsResult,
    layer: str,
    channel: int,
    mode: Mode,
    which: str,
    exemplars: list[Exemplar],
) -> tuple[bytes, ExemplarGridRead]:
    """The PNG grid of ``layer``/``channel``'s ``which`` exemplars (:func:`find_exemplars`)."""
    loaded = models.get(result.model)
    dataset = datasets.get(result.dataset)
    spec = loaded.spec
    images = [dataset.image(dataset.position(e.image)) for e in exemplars]
    x = torch.cat([spec.preprocess(i) for i in images])
    positions = [(e.position[0], e.position[1]) for e in exemplars]
    tiles = exemplar_tiles(
        loaded.index, x, positions, layer, channel, mode, mean=spec.mean, std=spec.std
    )
    grid, layout = image_grid(tiles, columns=min(8, len(exemplars)))
    png = encode_png(grid)
    read = ExemplarGridRead(
        layer=layer,
        channel=channel,
        mode=mode,
        which=which,
        images=[e.image for e in exemplars],
        scores=[e.score for e in exemplars],
        columns=layout.columns,
        tile_size=[int(tiles.shape[2]), int(tiles.shape[3])],
        png=base64.b64encode(png).decode("ascii"),
    )
    return png, read
