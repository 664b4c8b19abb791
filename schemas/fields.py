"""What several request models share: their base (:class:`RequestModel`), and field types
that declare each bound once.

A type here carries what a field means wherever it is used (its bounds, and its description
where that reads the same everywhere). What differs between the models that use it, such as a
default, an example or a description, stays at the field. On a field that may be null
(``Colormap | None``) the bounds apply to the value when it is given, as they did when they
were written at the field.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_DRAWN",
    "Channel",
    "Colormap",
    "Fit",
    "GridColumns",
    "LayerName",
    "OptimizationLayer",
    "RequestModel",
    "SampleName",
    "TilePadding",
    "TopK",
    "UnitList",
]


class RequestModel(BaseModel):
    """A request body or query, or a part of one: a field it does not declare is refused, not
    ignored (``additionalProperties: false`` in the schema)."""

    model_config = ConfigDict(extra="forbid")


LayerName = Annotated[str, Field(min_length=1, max_length=256)]
"""A module's qualified name (GET /v1/models/{model}/layers)."""

OptimizationLayer = Annotated[str, Field(min_length=1, max_length=200)]
"""The layer an optimization job reads (its request's ``layer``, a caricature's)."""

Channel = Annotated[int, Field(ge=0, le=1_000_000)]
"""A channel's index in a layer."""

UnitT = TypeVar("UnitT")

# The most units (channels, filters) of a layer that one grid draws.
MAX_DRAWN = 4096

TopK = Annotated[int, Field(ge=1, le=MAX_DRAWN)]
"""How many of a layer's units to draw, best first."""

UnitList = Annotated[list[UnitT], Field(min_length=1, max_length=MAX_DRAWN)]
"""Which of a layer's units to draw, in this order (``UnitList[Channel]``)."""

SampleName = Annotated[str, Field(max_length=64)]
"""A built-in sample image (GET /v1/samples)."""

Colormap = Annotated[str, Field(min_length=1, max_length=64)]
"""A matplotlib colormap's name."""

GridColumns = Annotated[int, Field(ge=1, le=256)]
"""Tiles per row of a grid picture."""

TilePadding = Annotated[int, Field(ge=0, le=32, description="Pixels between and around tiles.")]

Fit = Annotated[
    Literal["crop", "stretch"],
    Field(
        description="How the image meets the model's input size: `crop` scales the shorter "
        "side and cuts the centre; `stretch` scales each side."
    ),
]
