"""Jobs of every kind: the record, its states and progress, the API's view, the task message.

This module is the contract between the API and the workers that no kind owns. A kind's own
request and result live in a module of their own (:mod:`schemas.optimization`, ...); here
they are JSON objects that the kind's registration (``workers.kinds``) parses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from schemas.routes import KindName, StoredKindName, first_kind_name

# The Celery tasks and their queue. The service sends by name (``send_task``) and never
# imports the Celery app; the worker registers its tasks under these names and consumes the
# queue. One task runs a job of any kind (the kind is in the message); a job cut into shards
# runs them as SHARD_TASKs, the last of which merges their partials.
JOB_TASK = "cnnviz.job"
SHARD_TASK = "cnnviz.job.shard"
JOB_QUEUE = "gpu"

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


class JobStatus(StrEnum):
    """queued → running → succeeded | failed | cancelled; a queued job may be cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Progress(BaseModel):
    """Where a running job is: ``step`` of ``total`` (optimizer steps, images, ...)."""

    step: int = Field(ge=0, description="work done, in `unit`s")
    total: int = Field(ge=1, description="work in all, in `unit`s")
    unit: str = Field(default="steps", description="what is counted: 'steps', 'images'")
    objectives: list[float] = Field(
        default_factory=list, description="optimization: current objective value of each unit"
    )
    preview_step: int | None = Field(
        default=None, description="step of the latest preview image, if one was taken"
    )
    preview_images: int | None = Field(
        default=None,
        description="how many images the preview shows: the first ones (at most 64), each "
        "shrunk so the grid stays about 1024×1024 pixels",
    )


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(examples=["timeout", "worker_lost", "invalid_argument", "internal_error"])
    message: str


class WorkerBudget(BaseModel):
    """What a Celery worker can run, as it publishes it (:mod:`workers.budgets`)."""

    worker: str = Field(description="the worker's name (its Celery hostname)")
    queue: str = JOB_QUEUE
    device: str = Field(examples=["cuda:0", "cpu"], description="its pool children's device")
    memory_budget_mb: int = Field(
        ge=1, description="MiB a job's render may use there (the least over its children)"
    )


class Admission(BaseModel):
    """What a queued job's size was checked against before it was accepted."""

    memory_budget_mb: int = Field(ge=1, description="MiB: the render's memory budget")
    source: Literal["worker", "fallback"] = Field(
        description="'worker': the largest budget published by a live worker of the job's "
        "queue; 'fallback': no live worker had published one, so "
        "CNNVIZ_WORKER_MEMORY_BUDGET_MB"
    )
    queue: str = JOB_QUEUE
    worker: str | None = Field(default=None, description="the worker whose budget it was")
    device: str | None = Field(default=None, description="that worker's device")

    def note(self) -> str:
        """Where the budget came from, for a refusal's message."""
        if self.source == "worker":
            where = f"{self.worker}, {self.device}"
            return f"the largest of the live workers of queue {self.queue!r}: {where}"
        return (
            f"CNNVIZ_WORKER_MEMORY_BUDGET_MB, as no live worker of queue {self.queue!r} has "
            "published its own"
        )


class JobRead(BaseModel, Generic[RequestT, ResultT]):
    """A job as the API shows it; ``request`` and ``result`` have the shapes of its kind."""

    id: str
    kind: KindName = Field(examples=["optimization", "exemplar"])
    model: str
    status: JobStatus
    request: RequestT
    progress: Progress | None = None
    attempts: int = Field(default=0, description="deliveries to a worker (more after a loss)")
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    result: ResultT | None = None
    weights_sha256: str | None = Field(
        default=None,
        description="the sha256 of the model's weights file the job runs on (null for random "
        "or torchvision's named weights); a job never runs on other weights",
    )
    admission: Admission | None = Field(
        default=None,
        description="what a queued (Celery) job's size was checked against; null for "
        "in-process jobs, checked against the API's own device",
    )


class JobList(BaseModel):
    """A page of the caller's jobs, newest first, without their results (read a job for
    its result); ``next_page_token`` asks for the next page (null: this is the last)."""

    jobs: list[JobRead[dict[str, Any], dict[str, Any]]]
    next_page_token: str | None = Field(
        default=None, description="opaque; pass it as page_token for the next page"
    )


class JobTask(BaseModel):
    """The task message: small JSON, the job's id and resolved request, never tensors."""

    job_id: str
    kind: StoredKindName
    model: str
    request: dict[str, Any] = Field(description="the kind's request, resolved")
    ttl_seconds: int = Field(ge=1, description="how long the record lives after it finishes")
    weights_sha256: str | None = Field(
        default=None, description="the weights the job was submitted for; checked before it runs"
    )


class JobOptions(BaseModel):
    """What a job request may ask of any kind, besides the work itself."""

    callback_url: str | None = Field(
        default=None,
        max_length=2000,
        examples=["https://hooks.example.com/cnnviz"],
        description="an http(s) URL on an allowed host (CNNVIZ_CALLBACK_HOSTS) that gets an "
        "HMAC-signed POST when the job ends (see docs/jobs.md); not part of the job's identity",
    )


def job_path(job_id: str) -> str:
    """Where the API serves a job; its files are under this path."""
    return f"/v1/jobs/{job_id}"


def result_png_path(job_id: str) -> str:
    """The result grid of a succeeded job, as a PNG."""
    return f"{job_path(job_id)}/result.png"


def unit_png_path(job_id: str, index: int) -> str:
    """Picture ``index`` (in the result's order) of a succeeded job, as a PNG."""
    return f"{job_path(job_id)}/units/{index}.png"


def fingerprint(kind: str, model: str, request: BaseModel) -> str:
    """A canonical string of everything that determines a job (defaults included); the kind
    goes in by its first name, so that a rename keeps every fingerprint."""
    body = request.model_dump(mode="json")
    named = first_kind_name(kind)
    return json.dumps(
        {"kind": named, "model": model, **body}, sort_keys=True, separators=(",", ":")
    )


class JobRecord(BaseModel):
    """The job record both the service and the workers read and write.

    Each records backend stores it its own way (Redis: a hash, see
    :mod:`workers.records.redis_fields`), following the model's fields: a field added here
    is stored and read back with no other change.
    """

    id: str
    kind: StoredKindName
    model: str
    status: JobStatus
    request: dict[str, Any] = Field(description="the kind's request, resolved, as JSON")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    progress: Progress | None = None
    error: JobError | None = None
    cancel: bool = False
    idem: str | None = None
    callback_url: str | None = None
    weights_sha256: str | None = None
    admission: Admission | None = None
    owner: str = Field(
        default="anonymous",
        description="who may see the job: a hash of the caller's API key, or 'anonymous' "
        "when the service has no keys",
    )

    def task(self, ttl_seconds: int) -> JobTask:
        """The task message that runs this job (sent again when its worker was lost)."""
        return JobTask(
            job_id=self.id,
            kind=self.kind,
            model=self.model,
            request=self.request,
            ttl_seconds=ttl_seconds,
            weights_sha256=self.weights_sha256,
        )

    def read(self, result: BaseModel | None = None) -> JobRead[Any, Any]:
        """The API view of this record."""
        return JobRead(
            id=self.id,
            kind=self.kind,
            model=self.model,
            status=self.status,
            request=self.request,
            progress=self.progress,
            attempts=self.attempts,
            cancel_requested=self.cancel,
            created_at=_when(self.created_at),
            started_at=_when(self.started_at) if self.started_at is not None else None,
            finished_at=_when(self.finished_at) if self.finished_at is not None else None,
            error=self.error,
            result=result,
            weights_sha256=self.weights_sha256,
            admission=self.admission,
        )


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
