"""The exemplars kind's contract: which layers over which data set, and the images found."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.fields import RequestModel
from schemas.jobs import JobOptions
from schemas.routes import JobRoute, job_route

MAX_K = 100
MAX_LAYERS = 16


class DatasetJobOptions(JobOptions, RequestModel):
    """What a job over a data set asks first: the data set, and the layers (each kind's
    request declares them with its own description)."""

    dataset: str = Field(
        min_length=1, max_length=200, examples=["shapes"], description="see GET /v1/datasets"
    )
    layers: list[str]


class ExemplarsCreate(DatasetJobOptions):
    """Mine a data set for the images each channel of some layers responds to most."""

    layers: list[str] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        examples=[["block3.relu", "fc"]],
        description="dotted layer names; one forward pass serves them all",
    )
    k: int = Field(default=16, ge=1, le=MAX_K, description="images kept per channel")
    pool: Literal["mean", "max"] = Field(
        default="mean", description="a channel's score for an image: its mean or max activation"
    )
    bottom: bool = Field(default=False, description="also keep the k lowest-scoring images")


class Exemplar(BaseModel):
    """One image of a unit's top (or bottom) list."""

    image: str = Field(description="the image id: its path relative to the dataset's root")
    score: float = Field(description="the channel's pooled activation for this image")
    position: list[int] = Field(
        description="(y, x) of the channel's spatial maximum in this image, in the layer's grid"
    )


class ExemplarUnit(BaseModel):
    channel: int
    top: list[Exemplar]
    bottom: list[Exemplar] | None = None


class ExemplarLayer(BaseModel):
    name: str
    shape: list[int] = Field(
        description="the layer's maps for one image, unit-first: [units, h, w] (a tokens or "
        "channels-last layer too; positions are in that grid), or [K] for a vector layer"
    )
    units: list[ExemplarUnit]


class ExemplarsResult(BaseModel):
    """Per layer and channel, the top (and bottom) k images of the data set."""

    model: str
    dataset: str
    images: int = Field(description="images scored")
    skipped: int = Field(default=0, description="files that could not be read, left out")
    skipped_images: list[str] = Field(
        default_factory=list, description="ids of the first unreadable files (at most 100)"
    )
    pool: Literal["mean", "max"]
    k: int
    layers: list[ExemplarLayer]
    shards: int = Field(default=1, description="how many shards the data set was cut into")
    device: str = ""
    elapsed_s: float = 0.0


class ExemplarGridQuery(RequestModel):
    mode: Literal["full", "crop", "mask"] = Field(
        default="full",
        description="full: the whole images; crop: the receptive field around the maximum; "
        "mask: the upsampled activation over the image",
    )
    which: Literal["top", "bottom"] = Field(default="top", description="top or bottom k")


class ExemplarGridRead(BaseModel):
    layer: str
    channel: int
    mode: str
    which: str
    images: list[str] = Field(description="the image ids, in tile order (row by row)")
    scores: list[float]
    columns: int
    tile_size: list[int] = Field(description="(height, width) of a tile")
    png: str = Field(description="base64 PNG of the grid")


_EXAMPLES: dict[str, dict[str, Any]] = {
    "classes": {
        "summary": "The images each class logit ranks highest",
        "value": {"dataset": "shapes", "layers": ["fc"], "k": 16},
    },
    "conv": {
        "summary": "Top and bottom images of a conv layer's channels, by their maximum",
        "value": {"dataset": "shapes", "layers": ["block3.relu"], "pool": "max", "bottom": True},
    },
}

ROUTE = job_route(
    JobRoute(
        kind="exemplar",
        path="exemplars",
        request=ExemplarsCreate,
        result=ExemplarsResult,
        summary="Queue a job that ranks a data set's images for every channel of some layers.",
        tag="exemplars",
        examples=_EXAMPLES,
    )
)
