"""Running a dissection job to its result in this process, through the runner."""

from __future__ import annotations

import time

from cnnviz.models import ModelRegistry
from schemas.dissection import DissectionCreate, DissectionResult
from schemas.jobs import JobRecord, JobStatus, JobTask
from workers.kinds import Resources, get_kind
from workers.records.memory import MemoryRecords
from workers.run import execute

MODELS = ModelRegistry.from_file(None)


def dissect(resources: Resources, model: str = "shapes", **body: object) -> DissectionResult:
    """Run a dissection job through the runner with records in memory (as the in-process
    transport runs it: its shards one after another, then the merge)."""
    kind = get_kind("dissection")
    request = kind.prepare(DissectionCreate.model_validate(body), model, resources)
    records = MemoryRecords(600)
    record = JobRecord(
        id="job",
        kind=kind.name,
        model=model,
        status=JobStatus.QUEUED,
        request=request.model_dump(mode="json"),
        created_at=time.time(),
    )
    records.create(record, 600, None)
    task = JobTask(
        job_id="job", kind=kind.name, model=model, request=record.request, ttl_seconds=60
    )
    assert execute(task, resources, records) == JobStatus.SUCCEEDED, records.get("job").error
    done = records.get("job")
    assert done.progress is not None and done.progress.step == done.progress.total
    raw = records.result("job")
    assert raw is not None
    return DissectionResult.model_validate_json(raw)
