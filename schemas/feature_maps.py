"""Feature-map grids: the request options and the response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.constraints import at_most_one, at_most_one_given, exactly_one, exactly_one_given
from schemas.fields import (
    Channel,
    Colormap,
    Fit,
    GridColumns,
    LayerName,
    RequestModel,
    SampleName,
    TilePadding,
    TopK,
    UnitList,
)


class ImageSource(BaseModel):
    """The image of a JSON request: exactly one of a base64 file or a sample's name."""

    image: str | None = Field(
        default=None,
        description="The image file (PNG, JPEG, WebP, BMP, GIF), base64; a `data:` URL works.",
    )
    sample: SampleName | None = Field(
        default=None,
        examples=["triangle"],
        description="A built-in sample image instead (GET /v1/samples).",
    )

    _one_source = exactly_one_given(
        "image", "sample", message="give exactly one of image (base64) or sample"
    )


class FeatureMapsOptions(RequestModel):
    """Which layers to draw and how; the same fields in JSON and as multipart form fields."""

    model_config = ConfigDict(json_schema_extra=at_most_one("channels", "top_k"))

    layers: list[LayerName] = Field(
        min_length=1,
        max_length=16,
        examples=[["block1.conv", "block3.conv"]],
        description="Layer names (GET /v1/models/{model}/layers); all share one forward pass.",
    )
    channels: UnitList[Channel] | None = Field(
        default=None,
        examples=[[0, 3, 7]],
        description="Channels to draw, in this order, in every layer. Default: all.",
    )
    top_k: TopK | None = Field(
        default=None,
        examples=[16],
        description="Draw the k channels with the highest mean activation, highest first "
        "(at most the layer's width). Not with `channels`.",
    )
    normalize: Literal["channel", "layer"] = Field(
        default="channel",
        description="`channel`: each tile spans the whole colormap; `layer`: one range for "
        "the whole layer, so tiles compare with each other.",
    )
    colormap: Colormap = Field(
        default="viridis",
        examples=["viridis", "gray", "magma", "inferno", "plasma", "cividis"],
        description="Any matplotlib colormap name; append `_r` to reverse.",
    )
    columns: GridColumns | None = Field(
        default=None, description="Tiles per row. Default: a near-square grid."
    )
    padding: TilePadding = 1
    scale: int = Field(
        default=1, ge=1, le=16, description="Integer upscaling of each tile (nearest neighbour)."
    )
    fit: Fit = "crop"

    precision: Literal["fp32", "auto", "bf16", "fp16"] = Field(
        default="fp32",
        description="the forward pass's precision: `fp32` (exact numbers, the default), or "
        "`auto`, `bf16`, `fp16` (autocast, faster where the hardware has it: `auto` is bf16 "
        "on a CPU where bf16 is faster than fp32 and on CUDA with bf16); statistics are "
        "computed in fp32",
    )

    _one_selection = at_most_one_given(
        "channels", "top_k", message="give channels or top_k, not both"
    )


class FeatureMapsCreate(ImageSource, FeatureMapsOptions):
    """A JSON request: the options plus exactly one of a base64 image or a sample name."""

    model_config = ConfigDict(
        json_schema_extra={
            **at_most_one("channels", "top_k"),
            **exactly_one("image", "sample"),
        }
    )


class GridLayout(BaseModel):
    """Where each channel is in the grid image.

    Tile ``i`` is at row ``i // columns``, column ``i % columns``; its top-left pixel is at
    ``y = padding + row * (tile[0] + padding)``, ``x = padding + column * (tile[1] + padding)``.
    """

    rows: int = Field(examples=[6])
    columns: int = Field(examples=[6])
    tile: tuple[int, int] = Field(examples=[[64, 64]], description="[height, width] in pixels")
    padding: int = Field(examples=[1])
    channels: list[int] = Field(examples=[[0, 1, 2]], description="The channel of each tile.")


class ChannelStats(BaseModel):
    """The activations of one channel over its whole map."""

    channel: int
    min: float
    max: float
    mean: float


class LayerMapRead(BaseModel):
    """The grid of one layer."""

    name: str = Field(examples=["block1.conv"])
    shape: list[int] = Field(
        examples=[[32, 64, 64]],
        description="The layer's maps for one image, unit-first: [units, h, w] (a ViT's tokens "
        "layer: [768, 14, 14], the class token left out; a channels-last layer: [C, H, W]), "
        "or [K] for a vector layer (drawn as K tiles of 1×1).",
    )
    grid: GridLayout
    stats: list[ChannelStats] = Field(description="One entry per tile, in tile order.")
    image: str = Field(description="The grid, a base64 PNG (palette colours; white padding).")


class FeatureMapsRead(BaseModel):
    """Feature-map grids for one image."""

    model: str = Field(examples=["shapes"])
    layers: list[LayerMapRead]
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="the precision the forward pass ran in: the request's `precision`, "
        "with `auto` resolved for the device",
    )
