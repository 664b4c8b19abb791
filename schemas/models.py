"""Models and their layers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelRead(BaseModel):
    """One entry of the registry."""

    name: str = Field(examples=["shapes"])
    description: str = ""
    source: str = Field(
        description="builtin, a torchvision arch, timm:NAME, hf:DIRECTORY or a factory path"
    )
    origin: Literal["builtin", "config", "store"] = Field(
        default="config",
        description="where the entry comes from: the built-in model, the models file, or a "
        "registration (PUT /v1/models/{name})",
    )
    weights: str | None = Field(
        description="builtin, a file path, a torchvision name or random; null for an hf "
        "model whose directory holds them"
    )
    sha256: str | None = Field(
        default=None, description="the digest of a registered model's weights file"
    )
    # A list of two, not a tuple: schemathesis (tests/jobs/test_contract.py) reported the
    # tuple's schema as an invalid Schema Object in GET /v1/models/{model}'s response.
    input_size: list[int] = Field(
        min_length=2, max_length=2, examples=[[64, 64]], description="[height, width]"
    )
    channels: int = Field(examples=[3])
    mean: list[float]
    std: list[float]
    labels: list[str] = Field(default_factory=list)
    loaded: bool = Field(description="whether this process has loaded it yet")
    error: str | None = Field(default=None, description="why the model cannot be used, if so")


class ModelList(BaseModel):
    models: list[ModelRead]
    problems: list[str] = Field(
        default_factory=list,
        description="what went wrong when the models file or the model store was last read "
        "again; the last good entries stay in use until an edit fixes it",
    )


class LayerRead(BaseModel):
    """One addressable layer."""

    name: str = Field(examples=["block2.relu"])
    kind: str = Field(examples=["ReLU"], description="module class or function name")
    shape: list[int] = Field(
        examples=[[64, 32, 32]],
        description="the raw output for one image, as computed: [C, H, W], [H, W, C], "
        "[N, D] tokens or [K]; `axes` says which",
    )
    axes: Literal["CHW", "HWC", "tokens", "vector"] | None = Field(
        default=None,
        examples=["CHW"],
        description="what the output's axes are: channels first, channels last, N = "
        "prefix_tokens + h·w tokens of D features, or a vector; null when ambiguous (every "
        "endpoint refuses the layer until the model's registry entry declares its `axes`)",
    )
    units: int | None = Field(
        default=None, ge=1, examples=[64], description="channels or features: the layer's units"
    )
    token_grid: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        examples=[[14, 14]],
        description="[h, w] of the patch tokens (tokens only)",
    )
    prefix_tokens: int | None = Field(
        default=None,
        ge=0,
        examples=[1],
        description="tokens before the grid, such as a class token (tokens only); left out "
        "of every map",
    )
    features_first: bool = Field(
        default=False,
        description="tokens laid out [D, N] (features, then tokens) rather than [N, D]: "
        "declared in the registry only",
    )
    axes_note: str | None = Field(
        default=None, description="why the axes are ambiguous (when `axes` is null)"
    )


class LayerList(BaseModel):
    model: str
    input_shape: list[int] = Field(description="[C, H, W] the model takes")
    layers: list[LayerRead]
