"""Running a job (a dissection, an exemplars mining) to its result in this process, through
the runner."""

from __future__ import annotations

import time
from typing import Any

from cnnviz.models import ModelRegistry
from schemas.dissection import DissectionResult
from schemas.jobs import JobRecord, JobStatus, JobTask
from workers.kinds import Resources, get_kind
from workers.records.memory import MemoryRecords
from workers.run import execute

MODELS = ModelRegistry.from_file(None)


def queued(
    kind_name: str, resources: Resources, model: str, body: dict[str, Any], ttl: int = 600
) -> tuple[JobTask, MemoryRecords]:
    """A job of ``kind_name`` prepared and queued as ``job`` in records in memory, and the
    task that runs it (:func:`workers.run.execute`)."""
    kind = get_kind(kind_name)
    request = kind.prepare(kind.parse(body), model, resources)
    records = MemoryRecords(ttl)
    record = JobRecord(
        id="job",
        kind=kind.name,
        model=model,
        status=JobStatus.QUEUED,
        request=request.model_dump(mode="json"),
        created_at=time.time(),
    )
    records.create(record, ttl)
    return record.task(ttl), records


def run_job(kind_name: str, resources: Resources, model: str, body: dict[str, Any]) -> str:
    """Run a job of ``kind_name`` through the runner with records in memory (as the in-process
    transport runs it: its shards one after another, then the merge); its result's JSON,
    after checking that it succeeded with its progress complete."""
    task, records = queued(kind_name, resources, model, body)
    assert execute(task, resources, records) == JobStatus.SUCCEEDED, records.get("job").error
    done = records.get("job")
    assert done.progress is not None and done.progress.step == done.progress.total
    raw = records.result("job")
    assert raw is not None
    return raw


def dissect(resources: Resources, model: str = "shapes", **body: object) -> DissectionResult:
    """Run a dissection job to its result, in this process (:func:`run_job`)."""
    return DissectionResult.model_validate_json(run_job("dissection", resources, model, body))
