"""The dissection kind's contract: label every unit of some layers from a data set's concepts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.exemplars import MAX_K, MAX_LAYERS, DatasetJobOptions, Exemplar
from schemas.fields import RequestModel
from schemas.routes import JobRoute, job_route

Method = Literal["masks", "labels"]


class MisEncoder(RequestModel):
    """The registered model and layer whose embeddings the MIS observer compares."""

    model: str = Field(min_length=1, max_length=200, examples=["shapes"])
    layer: str = Field(min_length=1, max_length=500, examples=["flatten"])


class DissectionCreate(DatasetJobOptions):
    """Label each unit of some layers with the data set's concept it detects best."""

    layers: list[str] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        examples=[["block3.relu"]],
        description="dotted layer names; one forward pass per pass serves them all",
    )
    method: Method | None = Field(
        default=None,
        description="masks: IoU against pixel-level concept masks (NetDissect); labels: "
        "precision@k of image-level labels. Default: masks where the dataset has masks",
    )
    quantile: float = Field(
        default=0.005,
        gt=0.0,
        lt=0.5,
        description="masks: a unit is on above its (1 - quantile) activation quantile",
    )
    iou_threshold: float = Field(
        default=0.04, ge=0.0, le=1.0, description="masks: IoU above which a unit is a detector"
    )
    k: int = Field(
        default=16, ge=1, le=MAX_K, description="top images kept per unit (labels: precision@k)"
    )
    mis: bool = Field(
        default=False,
        description="also score each unit's interpretability with a machine observer (MIS, "
        "Zimmermann et al. 2024): see docs/dissection.md",
    )
    mis_encoder: MisEncoder | None = Field(
        default=None,
        description="mis: the encoder whose embeddings the observer compares; default: the "
        "dissected model's penultimate layer (pass an encoder trained on data like yours)",
    )


class Alternative(BaseModel):
    label: str
    score: float


class DissectionUnit(BaseModel):
    channel: int
    label: str | None = Field(description="the concept (masks) or label (labels) it detects best")
    score: float = Field(description="masks: IoU of the label; labels: precision@k")
    activation_threshold: float | None = Field(
        description="masks: the threshold T above which the unit is on; labels: null"
    )
    selectivity: float | None = Field(
        description="labels: class selectivity index over ReLU'd mean activations (null where "
        "its denominator is 0); masks: null"
    )
    alternatives: list[Alternative] = Field(description="the next 3 labels by score")
    top: list[Exemplar] = Field(description="the unit's top images by mean activation")
    mis: float | None = Field(
        default=None,
        description="machine interpretability score in [0, 1] (0.5: chance) with `mis`; null "
        "without it or where the data set has under 20 images",
    )


class DissectionLayer(BaseModel):
    name: str
    shape: list[int] = Field(description="the layer's output shape without the batch")
    detectors: int = Field(
        description="units whose score passes the bar: IoU > iou_threshold, precision@k >= 0.5"
    )
    unique_concepts: int = Field(description="distinct labels among the detectors")
    units: list[DissectionUnit]


class DissectionResult(BaseModel):
    """Per layer and unit: its label, score, threshold, alternatives and top images."""

    model: str
    dataset: str
    method: Method
    images: int = Field(description="images read (quantiles and top-k use them all)")
    skipped: int = Field(default=0, description="image files that could not be read")
    skipped_masks: int = Field(
        default=0, description="masks missing, corrupt, of the wrong size or out of range"
    )
    skipped_images: list[str] = Field(
        default_factory=list, description="ids of the first unreadable images (at most 100)"
    )
    skipped_mask_images: list[str] = Field(
        default_factory=list, description="ids of the first images with bad masks (at most 100)"
    )
    quantile: float
    iou_threshold: float
    k: int
    mis_encoder: MisEncoder | None = Field(
        default=None, description="the encoder the MIS observer used; null without `mis`"
    )
    layers: list[DissectionLayer]
    shards: int = 1
    device: str = ""
    elapsed_s: float = 0.0


class DissectionGridRead(BaseModel):
    layer: str
    channel: int
    label: str | None
    score: float
    images: list[str] = Field(description="the image ids, in tile order (row by row)")
    columns: int
    tile_size: list[int] = Field(description="(height, width) of a tile")
    png: str = Field(
        description="base64 PNG: each top image with the unit's binarised mask (its outline "
        "in white, outside darkened) and the label's concept mask (tinted red)"
    )


_EXAMPLES: dict[str, dict[str, Any]] = {
    "masks": {
        "summary": "NetDissect: each unit's IoU with the shapes' pixel masks",
        "value": {"dataset": "shapes", "layers": ["block4.relu"], "method": "masks"},
    },
    "labels": {
        "summary": "Precision@k of the image labels among each logit's top images",
        "value": {"dataset": "shapes", "layers": ["fc"], "method": "labels", "k": 16},
    },
}

ROUTE = job_route(
    JobRoute(
        kind="dissection",
        path="dissections",
        request=DissectionCreate,
        result=DissectionResult,
        summary="Queue a job that labels every unit of some layers with a dataset's concepts.",
        tag="dissection",
        examples=_EXAMPLES,
    )
)
