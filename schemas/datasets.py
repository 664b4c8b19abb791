"""Data sets: what GET /v1/datasets lists."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DatasetRead(BaseModel):
    name: str
    description: str = ""
    images: int | None = Field(default=None, description="image files found; none on error")
    labels: list[str] = Field(
        default_factory=list, description="the folders of an ImageFolder tree (root/<label>/x)"
    )
    concepts: list[str] = Field(
        default_factory=list,
        description="pixel-level concepts of the masks: mask value i is concepts[i - 1]",
    )
    has_masks: bool = Field(default=False, description="whether images have concept masks")
    builtin: bool = False
    error: str | None = Field(default=None, description="why the dataset cannot be read")


class DatasetsRead(BaseModel):
    datasets: list[DatasetRead]
