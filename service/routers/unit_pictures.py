"""What the routes that draw a unit of a data-set job (exemplars, dissection) share: the unit's
address in the path, the caller's succeeded job, and drawing in the torch pool."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.models import ModelRegistry
from service.concurrency import TorchPool
from service.deps import DatasetsDep, JobsDep, OwnerDep, PoolDep, RegistryDep
from service.jobs.manager import JobManager
from service.routers.jobs import JobId, UnitIndex, picture_or_json

__all__ = ["UnitPictures", "UnitPicturesDep"]

ResultT = TypeVar("ResultT", bound=BaseModel)


@dataclass(frozen=True)
class UnitPictures:
    """A request for the pictures of unit ``channel`` of ``layer`` of the caller's job
    ``job_id``, and what drawing them takes."""

    job_id: str
    layer: str
    channel: int
    request: Request
    jobs: JobManager
    owner: str
    registry: ModelRegistry
    datasets: DatasetRegistry
    pool: TorchPool

    async def result(self, kind: str, result_type: type[ResultT], what: str) -> ResultT:
        """The result of the caller's succeeded job of ``kind``, whose ``what`` are drawn."""
        result = await self.jobs.succeeded(self.job_id, self.owner, kind, what)
        assert isinstance(result, result_type)
        return result

    async def draw(self, render: Callable[..., tuple[bytes, BaseModel]], *args: Any) -> Response:
        """``render(registry, datasets, *args)`` in the torch pool, answered as PNG when the
        request's ``Accept`` prefers it, else as JSON."""
        png, read = await self.pool.run(render, self.registry, self.datasets, *args)
        return picture_or_json(self.request, png, read)


async def unit_pictures(
    job_id: JobId,
    layer: str,
    channel: UnitIndex,
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    registry: RegistryDep,
    datasets: DatasetsDep,
    pool: PoolDep,
) -> UnitPictures:
    return UnitPictures(job_id, layer, channel, request, jobs, owner, registry, datasets, pool)


UnitPicturesDep = Annotated[UnitPictures, Depends(unit_pictures)]
