"""The one error body of the API (RFC 9457 problem details)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Every error response: ``application/problem+json``.

    ``code`` is machine-readable and stable; ``detail`` is for people and names the bad value
    and the valid choices.
    """

    type: str = Field(examples=["urn:cnnviz:error:unknown_layer"])
    title: str = Field(examples=["Unknown layer"])
    status: int = Field(examples=[422])
    code: str = Field(examples=["unknown_layer"])
    detail: str = Field(
        examples=["unknown layer 'layer9' of model 'shapes'; see GET /v1/models/shapes/layers"]
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems of a request that failed validation."
    )


# Where the valid choices of a core error are listed (its ``listing``: a kind, then the
# route's arguments), so that every message that reaches a client can point at the route.
LISTINGS = {
    "models": "GET /v1/models",
    "layers": "GET /v1/models/{}/layers",
    "datasets": "GET /v1/datasets",
}


def with_listing(message: str, listing: tuple[str, ...]) -> str:
    """``message`` with the route that lists the valid choices, where it names one."""
    if not listing or listing[0] not in LISTINGS:
        return message
    return f"{message} (see {LISTINGS[listing[0]].format(*listing[1:])})"
