"""Filter weights: the query options and the answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from schemas.constraints import at_most_one_given
from schemas.fields import Colormap, GridColumns, RequestModel, TilePadding, TopK, UnitList


class WeightsQuery(RequestModel):
    """How to draw a convolution's kernels; query parameters of the weights endpoint."""

    mode: Literal["auto", "rgb", "slices", "norm"] = Field(
        default="auto",
        description="`rgb`: one colour tile per filter (3 input channels); `slices`: per "
        "filter its `k` input-channel slices with the largest sum |w|, labelled with their "
        "input channel; `norm`: the L2 norm over input channels, one heatmap per filter. "
        "`auto`: `rgb` for the model's first convolution when it reads 3 channels, else "
        "`slices`.",
    )
    k: int = Field(default=4, ge=1, le=64, description="Slices per filter in `slices` mode.")
    filters: UnitList[int] | None = Field(
        default=None,
        description="Filters (output channels) to draw, in this order. Default: all.",
    )
    top_k: TopK | None = Field(
        default=None,
        description="Draw the k filters with the largest L2 norm, largest first. Not with "
        "`filters`.",
    )
    normalize: Literal["filter", "layer"] = Field(
        default="filter",
        description="`filter`: each filter's tiles span the whole colour range (zero in the "
        "middle for signed weights); `layer`: one range for the layer, so filters compare.",
    )
    colormap: Colormap | None = Field(
        default=None,
        examples=["coolwarm", "RdBu_r", "gray", "viridis"],
        description="Any matplotlib colormap name. Default: `coolwarm` for signed weights, "
        "`viridis` for norms. `rgb` tiles use none.",
    )
    columns: GridColumns | None = Field(
        default=None,
        description="Tiles per row. Default: one row per filter in `slices` mode (k tiles), "
        "else a near-square grid.",
    )
    padding: TilePadding = 1
    scale: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Integer upscaling of each kernel (nearest neighbour). Default: about 32 "
        "pixels per kernel, less if the grid would be too large.",
    )

    _one_selection = at_most_one_given(
        "filters", "top_k", message="give filters or top_k, not both"
    )


class WeightGrid(BaseModel):
    """Where each kernel is in the grid image.

    Tile ``i`` is at row ``i // columns``, column ``i % columns``; its top-left pixel is at
    ``y = padding + row * (tile[0] + padding)``, ``x = padding + column * (tile[1] + padding)``.
    """

    rows: int = Field(examples=[4])
    columns: int = Field(examples=[4])
    tile: tuple[int, int] = Field(examples=[[30, 30]], description="[height, width] in pixels")
    padding: int = Field(examples=[1])
    filters: list[int] = Field(description="The filter (output channel) of each tile.")
    input_channels: list[int | None] = Field(
        description="The input channel of each tile in `slices` mode; null otherwise."
    )


class KernelStats(BaseModel):
    """The weights behind one tile: the slice, or the whole filter."""

    filter: int
    input_channel: int | None
    min: float
    max: float
    mean: float
    norm: float = Field(description="L2 norm")


class WeightsRead(BaseModel):
    """The kernels of one convolution, drawn as a grid, with their numbers."""

    model: str = Field(examples=["shapes"])
    layer: str = Field(examples=["block1.conv"])
    kind: str = Field(examples=["Conv2d"])
    weight_shape: list[int] = Field(
        examples=[[16, 3, 3, 3]], description="[filters, input channels per filter, kh, kw]"
    )
    groups: int = Field(examples=[1], description="the convolution's groups")
    mode: Literal["rgb", "slices", "norm"]
    normalize: Literal["filter", "layer"]
    scale: int = Field(description="the upscaling actually used")
    grid: WeightGrid
    stats: list[KernelStats] = Field(description="One entry per tile, in tile order.")
    values: list[list[list[float]]] | list[list[list[list[float]]]] = Field(
        description="The numbers drawn, per tile: [3][kh][kw] weights (`rgb`), [kh][kw] "
        "weights (`slices`) or [kh][kw] norms (`norm`)."
    )
    image: str = Field(description="The grid, a base64 PNG (white padding).")
