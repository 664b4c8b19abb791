"""Built-in sample images, for clients without an image of their own."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SampleRead(BaseModel):
    """One sample image."""

    name: str = Field(examples=["triangle"])
    url: str = Field(examples=["/v1/samples/triangle"], description="Where its PNG is.")


class SampleList(BaseModel):
    samples: list[SampleRead]
