"""Sanity checks of attribution methods: the request (methods, images) and the result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.constraints import exactly_one, exactly_one_given
from schemas.fields import LayerName, RequestModel
from schemas.jobs import JobOptions
from schemas.routes import JobRoute, job_route

# What is known of a method's check on some weights (an attribution, a method's listing say it).
SanityStatus = Literal["passed", "failed", "unknown"]


class SanityCheckCreate(RequestModel):
    """Adebayo et al.'s cascading randomization for some methods, on images or a data set."""

    model_config = ConfigDict(strict=True, json_schema_extra=exactly_one("images", "dataset"))

    methods: list[str] = Field(
        min_length=1,
        max_length=8,
        examples=[["gradcam", "saliency", "guided_gradcam"]],
        description="Methods to check (GET /v1/attribution-methods).",
    )
    layer: LayerName | None = Field(
        default=None,
        examples=["block4.relu"],
        description="The layer of the CAM methods.",
    )
    images: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Images (PNG, JPEG, WebP, BMP, GIF), base64; or give `dataset`.",
    )
    dataset: str | None = Field(
        default=None, max_length=64, examples=["shapes"], description="A data set's name."
    )
    max_images: int = Field(
        default=8, ge=1, le=64, description="With `dataset`: its first images, this many."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the re-initialisation.")

    _one_source = exactly_one_given(
        "images", "dataset", message="give exactly one of images (base64) or dataset"
    )


class SanityStageRead(BaseModel):
    """One stage: every module from the output down to ``layer`` re-initialised."""

    layer: str = Field(description="the module re-initialised last")
    spearman: float = Field(description="mean Spearman correlation of |map| with the trained")


class SanityMethodRead(BaseModel):
    """One method's check."""

    method: str
    passes: bool = Field(description="mean correlation after full randomization below 0.5")
    correlations: list[SanityStageRead]


class SanityCheckResult(BaseModel):
    """The check of each method, on ``images`` images."""

    model: str
    layer: str | None
    images: int
    threshold: float = Field(description="the fixed pass threshold, 0.5")
    methods: list[SanityMethodRead]


class SanityCheckJobCreate(SanityCheckCreate, JobOptions):
    """A sanity-check job: the request and job options."""


# Checks that run on the built-in model as it is (tests run each one).
EXAMPLES: dict[str, dict[str, Any]] = {
    "shapes": {
        "summary": "Grad-CAM, saliency and guided Grad-CAM on 8 images of the shapes set",
        "value": {
            "methods": ["gradcam", "saliency", "guided_gradcam"],
            "layer": "block4.relu",
            "dataset": "shapes",
            "max_images": 8,
        },
    },
}

JOB_ROUTE = job_route(
    JobRoute(
        kind="sanity_check",
        path="sanity-checks",
        request=SanityCheckJobCreate,
        result=SanityCheckResult,
        summary="Queue Adebayo's cascading randomization of attribution methods; poll the job "
        "at `Location`.",
        tag="attributions",
        examples=EXAMPLES,
    )
)
