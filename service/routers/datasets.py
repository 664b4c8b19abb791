"""Data sets: list them, fetch one image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from cnnviz.errors import CnnvizError
from schemas.datasets import DatasetRead, DatasetsRead
from schemas.errors import Problem
from service.deps import DatasetsDep, PoolDep

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("")
async def list_datasets(datasets: DatasetsDep, pool: PoolDep) -> DatasetsRead:
    """Every data set with its image count and labels, or why it cannot be read."""

    def describe() -> DatasetsRead:
        out = []
        for name in datasets.names():
            try:
                spec = datasets.spec(name)
                dataset = datasets.get(name)
                out.append(
                    DatasetRead(
                        name=name,
                        description=spec.description,
                        images=len(dataset),
                        labels=dataset.labels,
                        concepts=dataset.concepts,
                        has_masks=dataset.has_masks,
                        builtin=spec.path is None,
                    )
                )
            except CnnvizError as exc:
                out.append(DatasetRead(name=name, error=str(exc)))
        return DatasetsRead(datasets=out)

    return await pool.run(describe)


@router.get(
    "/{dataset}/images/{image_id:path}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}},
        404: {"model": Problem, "description": "unknown dataset or image"},
        422: {"model": Problem, "description": "the file cannot be decoded"},
    },
)
async def read_image(
    dataset: str,
    image_id: Annotated[str, Path(description="the file's path relative to the dataset root")],
    datasets: DatasetsDep,
    pool: PoolDep,
) -> Response:
    """One image of a data set, as stored (or as PNG for the generated set)."""

    def load() -> tuple[bytes, str]:
        found = datasets.get(dataset)
        return found.encoded(found.position(image_id))

    data, media = await pool.run(load)
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})
