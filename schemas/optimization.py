"""The optimization kind's contract: what a client asks for, and the images it gets back."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict

from schemas.exemplars import MAX_K
from schemas.fields import OptimizationLayer, RequestModel
from schemas.jobs import JobOptions
from schemas.objectives import (
    CaricatureSpec,
    ObjectiveKind,
    check_objective,
    default_objective,
    objective_rules,
)
from schemas.routes import JobRoute, job_route

# A whole layer is one job (resnet18 layer4 has 512 channels); render chunks it to fit memory.
MAX_UNITS = 512
MAX_STEPS = 4096
MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 16


class StoredTop(RequestModel):
    """One unit's best images in a data set, as an exemplars or dissection job kept them."""

    model_config = ConfigDict(strict=True)

    channel: int = Field(ge=0)
    top_image: str | None = Field(description="the id of the unit's top image")
    scores: list[float] = Field(max_length=MAX_K, description="the stored top-k, best first")


class DatasetScores(RequestModel):
    """What an optimization's patterns are compared with, copied from its `exemplars_job` when
    it is queued, so the job never reads another job (nor the data set) when it runs."""

    model_config = ConfigDict(strict=True)

    job: str
    dataset: str
    pool: Literal["mean", "max"]
    images: int = Field(ge=0, description="images the job scored")
    units: list[StoredTop] = Field(max_length=MAX_UNITS)


class VsDataset(BaseModel):
    """A pattern next to the data set's images, for the same unit and pooling."""

    exemplars_job: str
    dataset: str
    pool: Literal["mean", "max"] = Field(description="the exemplars job's pooling")
    activation: float = Field(
        description="the unit's pooled activation for the pattern, at the model's input size, "
        "without transforms"
    )
    top_score: float = Field(description="the unit's score for its top data set image")
    top_image: str | None = Field(description="that image's id")
    ratio: float | None = Field(
        description="activation / top_score; below 1 the unit responds more to real data "
        "than to its pattern; null where top_score <= 0"
    )
    rank: int | None = Field(
        description="where the pattern would rank among the data set's images (1: above "
        "all); exact within the job's stored top `top_k`, null below it (rank > top_k)"
    )
    top_k: int = Field(description="the data set's scores the exemplars job kept per unit")
    images: int = Field(description="images in the data set the job scored")


class NeuronSpec(RequestModel):
    """One unit of a feature map: a channel at a position (default: the centre)."""

    model_config = ConfigDict(strict=True)

    channel: int = Field(ge=0, examples=[3])
    y: int | None = Field(default=None, ge=0, description="row; default: the centre")
    x: int | None = Field(default=None, ge=0, description="column; default: the centre")


ChannelIndex = Annotated[int, Field(ge=0)]
# The numeric precision of a model's forward pass (cnnviz.precision resolves "auto").
Precision = Literal["auto", "fp32", "bf16", "fp16"]


# The validator's rules between fields, in the schema too (see _consistent below).
_OPTIMIZATION_RULES: JsonDict = {
    "allOf": [
        *objective_rules(),
        {
            "if": {"required": ["diversity"], "properties": {"diversity": {"exclusiveMinimum": 0}}},
            "then": {
                "required": ["images_per_unit"],
                "properties": {"images_per_unit": {"minimum": 2}},
            },
        },
        {
            "if": {"required": ["channels"], "properties": {"channels": {"type": "array"}}},
            "then": {"properties": {"channels": {"uniqueItems": True}}},
        },
    ]
}


class OptimizationCreate(JobOptions, RequestModel):
    """An activation-maximization job: which units of which layer, and how to optimize.

    Strict: numbers and booleans must be JSON numbers and booleans (`true` is not 1).
    """

    model_config = ConfigDict(strict=True, json_schema_extra=_OPTIMIZATION_RULES)

    layer: OptimizationLayer = Field(
        examples=["block3.relu"],
        description="dotted layer name; see GET /v1/models/{model}/layers",
    )
    objective: ObjectiveKind | None = Field(
        default=None,
        strict=False,  # the enum from its JSON string
        description="what to maximise; default: 'neuron' when `neuron` is given, else 'channel'",
    )
    channels: list[ChannelIndex] | Literal["all"] = Field(
        default="all",
        description=f"channel (or class) indices, one image each, at most {MAX_UNITS}; or 'all' "
        "(objectives 'channel' and 'class_logit')",
        examples=[[0, 5, 7], "all"],
    )
    neuron: NeuronSpec | None = Field(default=None, description="objective 'neuron' only")
    direction: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=8192,
        description="a vector in the layer's channel space (objective 'direction' only)",
    )
    caricature: CaricatureSpec | None = Field(
        default=None, description="objective 'caricature' only: the image to climb towards"
    )
    steps: int = Field(default=256, ge=1, le=MAX_STEPS, description="optimizer steps")
    image_size: int | None = Field(
        default=None,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="side of the square images; default: the model's input size (at least "
        f"{MIN_IMAGE_SIZE})",
    )
    lr: float = Field(default=0.05, gt=0, le=1, description="Adam learning rate")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="same seed, same images")
    param: Literal["fourier", "pixel"] = Field(
        default="fourier", description="image parameterization"
    )
    decorrelate: bool = Field(default=True, description="decorrelated colour (3-channel models)")
    transforms: Literal["standard", "none"] = Field(
        default="standard", description="random jitter, scale and rotation each step, or none"
    )
    images_per_unit: int = Field(
        default=1,
        ge=1,
        le=8,
        description="images optimized for each unit; with `diversity`, different ones",
    )
    diversity: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="weight of Lucid's diversity term among the images of one unit "
        "(needs images_per_unit >= 2), on the scale of the unit's objective: too large a "
        "weight trades the objective away for variety",
    )
    l1: float = Field(default=0.0, ge=0, le=100, description="L1 penalty weight on the image")
    l2: float = Field(default=0.0, ge=0, le=100, description="L2 penalty weight on the image")
    tv: float = Field(default=0.0, ge=0, le=100, description="total-variation penalty weight")
    redirect_relu_steps: int = Field(
        default=16,
        ge=0,
        le=MAX_STEPS,
        description="redirect ReLU gradients for the first N steps, so units that start "
        "inactive get a gradient (0: off)",
    )
    precision: Precision = Field(
        default="auto",
        description="the model's forward and backward in autocast: 'auto' is bf16 on a CPU "
        "where bf16 is faster than fp32 (AMX, or AMD with avx512_bf16) and on CUDA devices "
        "with bf16, fp16 with a gradient scaler on older CUDA devices, fp32 elsewhere; the "
        "image, the optimizer and the objective values stay fp32. The result's `precision` is "
        "the one used",
    )
    compile: bool | None = Field(
        default=None,
        description="run the optimization steps compiled (torch.compile); unset: the "
        "service's CNNVIZ_COMPILE decides when the job is submitted. The job's record and its "
        "result's `settings` carry the choice, and a compiled and an eager result are two "
        "results (they differ in the last bits)",
    )

    exemplars_job: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="an exemplars or dissection job of the caller, on the same model and "
        "layer, that has succeeded: each pattern gets `vs_dataset`, its activation next to "
        "that job's top images (no data set is read for it). Objectives whose units are "
        "channels, and 'neuron'",
    )
    dataset_scores: DatasetScores | None = Field(
        default=None,
        json_schema_extra={"readOnly": True},
        description="set by the service when the job is queued: the scores of "
        "`exemplars_job` that `vs_dataset` compares with (a value sent is replaced)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        values = dict(self)
        if self.objective is None:
            self.objective = default_objective(values)
        check_objective(self.objective, values, self.images_per_unit)
        if isinstance(self.channels, list):
            if not 1 <= len(self.channels) * self.images_per_unit <= MAX_UNITS:
                raise ValueError(
                    f"`channels` × `images_per_unit` must be 1 to {MAX_UNITS} images, got "
                    f"{len(self.channels)} × {self.images_per_unit}"
                )
            if len(set(self.channels)) != len(self.channels):
                raise ValueError("`channels` has duplicates")
        if self.diversity > 0 and self.images_per_unit < 2:
            raise ValueError(
                "`diversity` compares the images of one unit: set images_per_unit >= 2"
            )
        return self


class UnitResult(BaseModel):
    """One optimized unit."""

    channel: int | None = Field(description="channel or class index; none for a whole layer")
    sample: int = Field(default=0, description="which of the unit's images_per_unit images")
    y: int | None = None
    x: int | None = None
    image: str | None = Field(
        default=None,
        description="base64 PNG of the optimized image; left out of large results (see "
        "`image_url`, and `?inline=true` on the job)",
    )
    image_url: str | None = Field(default=None, description="the same PNG as a file")
    objective: float = Field(description="final objective value")
    initial_objective: float = Field(description="objective value of the starting noise")
    vs_dataset: VsDataset | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="with `exemplars_job` only: the pattern against the data set's images",
    )


class OptimizationResult(BaseModel):
    """The optimized images, and everything needed to repeat the run."""

    model: str
    layer: str
    objective: ObjectiveKind
    units: list[UnitResult]
    grid: str | None = Field(
        default=None,
        description="base64 PNG of all units, tiled in order; left out of large results (see "
        "`grid_url`)",
    )
    grid_url: str | None = Field(default=None, description="the same grid PNG as a file")
    grid_columns: int
    image_size: int
    seed: int
    settings: dict[str, Any] = Field(description="the render settings actually used")
    device: str
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="the precision the job ran in (`precision` resolved)"
    )
    elapsed_s: float


# Examples for /docs, each a request that works on the built-in model as it is.
_EXAMPLES: dict[str, dict[str, Any]] = {
    "channels": {
        "summary": "Four channels of a layer, one image each",
        "value": {"layer": "block3.relu", "channels": [0, 1, 2, 3], "steps": 256, "seed": 0},
    },
    "whole layer": {
        "summary": "Every channel of a layer in one job",
        "value": {"layer": "block2.relu", "channels": "all", "steps": 128},
    },
    "neuron": {
        "summary": "One neuron: a channel at a position",
        "value": {"layer": "block3.relu", "neuron": {"channel": 5, "y": 8, "x": 8}},
    },
    "class": {
        "summary": "What the model calls a triangle (class 2)",
        "value": {"layer": "fc", "objective": "class_logit", "channels": [2]},
    },
    "diversity": {
        "summary": "Three different images of one channel",
        "value": {
            "layer": "block2.relu",
            "channels": [4],
            "images_per_unit": 3,
            "diversity": 1.0,
        },
    },
    "caricature": {
        "summary": "Caricature: what a layer sees in an image, exaggerated",
        "value": {"layer": "block2.relu", "caricature": {"sample": "triangle"}, "steps": 128},
    },
    "deepdream": {
        "summary": "DeepDream: the whole layer's energy",
        "value": {"layer": "block3.relu", "objective": "layer", "steps": 128},
    },
}

ROUTE = job_route(
    JobRoute(
        kind="optimization",
        path="optimizations",
        request=OptimizationCreate,
        result=OptimizationResult,
        summary="Queue an activation-maximization job; poll the job at `Location`.",
        examples=_EXAMPLES,
    )
)
