"""Attributions: the request (an image, a method, targets) and the answer (maps and numbers)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.constraints import exactly_one
from schemas.jobs import JobOptions
from schemas.routes import JobRoute, job_route

Target = Annotated[int, Field(ge=0, le=1_000_000)] | Annotated[str, Field(max_length=256)]


class AttributionsOptions(BaseModel):
    """What to explain and how; the same fields in JSON and as multipart form fields."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        min_length=1,
        max_length=64,
        examples=["gradcam", "saliency", "integrated_gradients", "guided_gradcam", "occlusion"],
        description="`gradcam` and `guided_gradcam` (need `layer`), `saliency`, "
        "`integrated_gradients`, `occlusion`.",
    )
    layer: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        examples=["block4.relu"],
        description="The module whose output Grad-CAM weighs (its qualified name; GET "
        "/v1/models/{model}/layers); usually the last convolutional block. Other methods "
        "ignore it.",
    )
    target: Target | list[Target] | None = Field(
        default=None,
        examples=["triangle", 2, ["triangle", "star"]],
        description="The class(es) to explain, by index or label; up to 16 (multipart: repeat "
        "the field). Default: the top prediction.",
    )
    output: int | str | None = Field(
        default=None,
        examples=[0],
        description="For a model with several outputs (a tuple, or a dict), which one holds "
        "the class scores: an index, or a key.",
    )
    steps: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Integrated gradients: integration steps (Gauss-Legendre). Each target costs "
        "`steps` passes; past the synchronous limit the request is refused.",
    )
    baseline: Literal["black", "white", "mean"] = Field(
        default="black",
        description="What 'nothing' is for integrated gradients' start and occlusion's patch: "
        "a black or white image, or the normalisation's mean colour.",
    )
    window: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Occlusion: the patch's side in pixels. Default: an eighth of the input's "
        "shorter side.",
    )
    stride: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Occlusion: pixels between patch positions (at most `window`). Default: "
        "half the window.",
    )
    colormap: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        examples=["turbo", "jet", "inferno", "coolwarm"],
        description="Any matplotlib colormap. Default: `turbo` for unsigned maps (Grad-CAM, "
        "saliency, guided Grad-CAM), `coolwarm` for signed ones, zero in the middle.",
    )
    opacity: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Of the heatmap over the input in `overlay`."
    )
    picture: Literal["overlay", "map"] = Field(
        default="overlay",
        description="Which PNG `Accept: image/png` returns: the map over the input, or alone.",
    )
    fit: Literal["crop", "stretch"] = Field(
        default="crop",
        description="How the image meets the model's input size: `crop` scales the shorter "
        "side and cuts the centre; `stretch` scales each side.",
    )

    @property
    def targets(self) -> list[int | str] | None:
        """``target`` as a list (None: the top prediction)."""
        if self.target is None:
            return None
        return list(self.target) if isinstance(self.target, list) else [self.target]


class AttributionsCreate(AttributionsOptions):
    """A JSON request: the options plus exactly one of a base64 image or a sample name."""

    # Strict: in JSON `false` is not 0 (the form fields of multipart are text, and lax).
    model_config = ConfigDict(strict=True, json_schema_extra=exactly_one("image", "sample"))

    image: str | None = Field(
        default=None,
        description="The image file (PNG, JPEG, WebP, BMP, GIF), base64; a `data:` URL works.",
    )
    sample: str | None = Field(
        default=None,
        max_length=64,
        examples=["triangle"],
        description="A built-in sample image instead (GET /v1/samples).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.image is None) == (self.sample is None):
            raise ValueError("give exactly one of image (base64) or sample")
        return self


class PredictionRead(BaseModel):
    """One class as the model scored it."""

    index: int = Field(examples=[2])
    label: str = Field(examples=["triangle"])
    score: float = Field(description="the model's raw output (logit) for the class")
    probability: float | None = Field(
        description="softmax over the classes; null for a model with one output score"
    )


class MapStatsRead(BaseModel):
    """The numbers of one attribution map, at the input's resolution."""

    min: float
    max: float
    mean: float
    sum: float
    peak: tuple[int, int] = Field(description="[y, x] of the largest value")


class CompletenessRead(BaseModel):
    """Integrated gradients' check: the attributions sum to the score difference."""

    sum: float = Field(description="the sum of the attributions")
    expected: float = Field(description="S(image) - S(baseline) for the target")
    relative_error: float = Field(description="|sum - expected| / |expected|")


class TargetAttributionRead(BaseModel):
    """The attribution of one target."""

    target: PredictionRead
    stats: MapStatsRead
    overlay: str = Field(description="The map over the input the model saw, a base64 PNG.")
    map: str = Field(description="The map alone, a base64 palette PNG.")
    completeness: CompletenessRead | None = None


class AttributionsRead(BaseModel):
    """Which pixels made the prediction, per target."""

    model: str = Field(examples=["shapes"])
    method: str = Field(examples=["gradcam"])
    layer: str | None = Field(examples=["block4.relu"])
    signed: bool = Field(
        description="whether values have a sign (negative: evidence against the target)"
    )
    input_size: tuple[int, int] = Field(examples=[[64, 64]], description="[height, width]")
    predictions: list[PredictionRead] = Field(description="The top 5, best first.")
    attributions: list[TargetAttributionRead]


class AttributionJobCreate(AttributionsCreate, JobOptions):
    """An attribution job: the same request as the synchronous one, and job options."""


# Attributions too long to answer at once (tests run each one).
JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "integrated_gradients": {
        "summary": "Integrated gradients with 1024 steps for three classes",
        "value": {
            "sample": "star",
            "method": "integrated_gradients",
            "steps": 1024,
            "target": ["star", "cross", "hexagon"],
        },
    },
    "occlusion": {
        "summary": "Occlusion with 4-pixel patches at every pixel",
        "value": {"sample": "square", "method": "occlusion", "window": 4, "stride": 1},
    },
}

JOB_ROUTE = job_route(
    JobRoute(
        kind="attribution",
        path="attribution-jobs",
        request=AttributionJobCreate,
        result=AttributionsRead,
        summary="Queue an attribution too long to answer at once; poll the job at `Location`.",
        examples=JOB_EXAMPLES,
    )
)
