"""Attributions: the request (an image, a method, targets) and the answer (maps and numbers)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.constraints import exactly_one
from schemas.feature_maps import ImageSource
from schemas.fields import Colormap, Fit, LayerName, RequestModel
from schemas.jobs import JobOptions
from schemas.routes import JobRoute, job_route
from schemas.sanity import SanityStatus

Target = Annotated[int, Field(ge=0, le=1_000_000)] | Annotated[str, Field(max_length=256)]
# Occlusion's patch: its side, and the step between its positions.
PatchPixels = Annotated[int, Field(ge=1, le=4096)]


class SmoothOptions(RequestModel):
    """A noise tunnel around a gradient method (captum's NoiseTunnel)."""

    type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = Field(
        default="smoothgrad",
        description="Average the maps of the noisy copies (SmoothGrad), their squares, or "
        "take their variance (VarGrad).",
    )
    noise_samples: int = Field(
        default=16, ge=1, le=256, description="Noisy copies; each costs the method's images."
    )
    noise_level: float = Field(
        default=0.15,
        gt=0.0,
        le=1.0,
        description="σ of the Gaussian noise as a fraction of the input's value range "
        "(max - min), as in the SmoothGrad paper.",
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Seed of the noise.")


class AttributionsOptions(RequestModel):
    """What to explain and how; the same fields in JSON and as multipart form fields."""

    method: str = Field(
        min_length=1,
        max_length=64,
        examples=["gradcam"],
        description="An attribution method: GET /v1/attribution-methods lists them, with the "
        "options each reads and its cost.",
    )
    layer: LayerName | None = Field(
        default=None,
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
    window: PatchPixels | None = Field(
        default=None,
        description="Occlusion: the patch's side in pixels. Default: an eighth of the input's "
        "shorter side.",
    )
    stride: PatchPixels | None = Field(
        default=None,
        description="Occlusion: pixels between patch positions (at most `window`). Default: "
        "half the window.",
    )
    colormap: Colormap | None = Field(
        default=None,
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
    smooth: SmoothOptions | None = Field(
        default=None,
        description="Average the map over noisy copies of the input (SmoothGrad and kin); "
        "gradient methods only (GET /v1/attribution-methods: `smoothable`).",
    )
    metrics: list[Literal["deletion", "insertion"]] = Field(
        default_factory=list,
        max_length=2,
        examples=[["deletion", "insertion"]],
        description="Faithfulness scores to compute for each target's map: RISE's deletion "
        "and insertion curves and their AUCs, with a random-map reference (docs/attribution.md "
        "states the protocol). Each costs (metric_steps + 1) × (targets + random_maps) images.",
    )
    metric_steps: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Points of the deletion/insertion curves, less one: the ranked pixels are "
        "replaced in this many chunks.",
    )
    random_maps: int = Field(
        default=8,
        ge=0,
        le=64,
        description="Uniform-noise maps whose mean AUCs are the reference a method must beat.",
    )
    metric_seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="Seed of the random maps' generator."
    )
    overlay_full: bool = Field(
        default=False,
        description="Also return each map over the uploaded image at its own size "
        "(`overlay_full`); under `fit: crop` the margins the model did not see have no "
        "overlay.",
    )
    fit: Fit = "crop"

    @property
    def targets(self) -> list[int | str] | None:
        """``target`` as a list (None: the top prediction)."""
        if self.target is None:
            return None
        return list(self.target) if isinstance(self.target, list) else [self.target]


class AttributionsCreate(ImageSource, AttributionsOptions):
    """A JSON request: the options plus exactly one of a base64 image or a sample name."""

    # Strict: in JSON `false` is not 0 (the form fields of multipart are text, and lax).
    model_config = ConfigDict(strict=True, json_schema_extra=exactly_one("image", "sample"))


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


class RandomReferenceRead(BaseModel):
    """The mean AUCs of the random maps: what a map must beat to be worth anything."""

    deletion_auc: float | None = Field(description="lower is better; null if not asked for")
    insertion_auc: float | None = Field(description="higher is better; null if not asked for")


class FaithfulnessRead(BaseModel):
    """RISE's deletion and insertion scores of one target's map (docs/attribution.md)."""

    deletion_auc: float | None = Field(
        description="Area under the target's probability as the top-ranked pixels are replaced "
        "by the mean colour; lower: the map found what the model used. Null if not asked for."
    )
    insertion_auc: float | None = Field(
        description="Area under the target's probability as the top-ranked pixels are put back "
        "into a blurred image; higher is better. Null if not asked for."
    )
    random: RandomReferenceRead | None = Field(
        description="The same AUCs for random maps (null with random_maps 0)."
    )
    deletion_curve: list[float] | None = Field(
        description="The metric_steps + 1 probabilities, from 0 to every pixel replaced."
    )
    insertion_curve: list[float] | None = Field(
        description="The metric_steps + 1 probabilities, from the blurred image to the image."
    )


class TargetAttributionRead(BaseModel):
    """The attribution of one target."""

    target: PredictionRead
    stats: MapStatsRead
    overlay: str = Field(description="The map over the input the model saw, a base64 PNG.")
    map: str = Field(description="The map alone, a base64 palette PNG.")
    overlay_full: str | None = Field(
        default=None,
        description="With `overlay_full` in the request: the map over the uploaded image at "
        "its own size, a base64 PNG.",
    )
    completeness: CompletenessRead | None = None
    faithfulness: FaithfulnessRead | None = Field(
        default=None, description="With `metrics` in the request: how far to trust the map."
    )


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
    sanity: SanityStatus = Field(
        default="unknown",
        description="The method's sanity check (Adebayo's cascading randomization, "
        "POST /v1/models/{model}/sanity-checks) on this model's weights, at this layer: "
        "unknown until a check has run for them.",
    )


class CostRead(BaseModel):
    """What a method costs: images run through the model."""

    formula: str = Field(
        examples=["targets × steps"],
        description="Images as a formula of targets, steps, patches (occlusion), channels "
        "(the layer's) and noise_samples (with `smooth`, for a smoothable method).",
    )
    default_images: int | None = Field(
        default=None,
        description="For the model named: images for one target with the default options "
        "(null where it depends on the layer chosen).",
    )


class AttributionMethodRead(BaseModel):
    """One attribution method, as the service runs it."""

    name: str = Field(examples=["gradcam"])
    title: str = Field(examples=["Grad-CAM"])
    summary: str
    needs_layer: bool = Field(description="whether the request must name a `layer`")
    signed: bool = Field(description="whether maps have a sign (negative: against the target)")
    smoothable: bool = Field(description="whether `smooth` (a noise tunnel) applies")
    options: list[str] = Field(description="the request fields the method reads")
    cost: CostRead
    sanity: SanityStatus = Field(
        default="unknown",
        description="Adebayo's cascading randomization check on the weights of the model "
        "named, over every layer checked: failed where any check failed, passed where all "
        "passed, unknown until a check has run for these weights (or without `model`).",
    )


class AttributionMethodList(BaseModel):
    """Every attribution method and every faithfulness metric."""

    model: str | None = Field(description="the model the costs are for, if one was named")
    methods: list[AttributionMethodRead]
    metrics: list[str] = Field(examples=[["deletion", "insertion"]])
    smooth_types: list[str] = Field(examples=[["smoothgrad", "smoothgrad_sq", "vargrad"]])


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
    "metrics": {
        "summary": "Grad-CAM of three classes with deletion and insertion scores",
        "value": {
            "sample": "star",
            "method": "gradcam",
            "layer": "block4.relu",
            "target": ["star", "cross", "hexagon"],
            "metrics": ["deletion", "insertion"],
        },
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
