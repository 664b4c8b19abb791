"""Optimization jobs: the request, the job record and result, and the task message.

This module is the contract between the API and the workers. Besides the pydantic models it
names the Celery task and queue and the layout of a job record in Redis, so the service can
send tasks by name and read records without importing anything of ``workers``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The task and its queue. The service sends by name (``send_task``) and never imports the
# Celery app; the worker registers its task under this name and consumes this queue.
OPTIMIZE_TASK = "cnnviz.optimize"
JOB_QUEUE = "gpu"

# A whole layer is one job (resnet18 layer4 has 512 channels); render chunks it to fit memory.
MAX_UNITS = 512
MAX_STEPS = 4096
MAX_IMAGE_SIZE = 1024


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


class ObjectiveKind(StrEnum):
    """What is maximised: a channel's mean, one neuron, a whole layer, a direction, a logit."""

    CHANNEL = "channel"
    NEURON = "neuron"
    LAYER = "layer"
    DIRECTION = "direction"
    CLASS_LOGIT = "class_logit"


class NeuronSpec(BaseModel):
    """One unit of a feature map: a channel at a position (default: the centre)."""

    model_config = ConfigDict(extra="forbid")

    channel: int = Field(ge=0, examples=[3])
    y: int | None = Field(default=None, ge=0, description="row; default: the centre")
    x: int | None = Field(default=None, ge=0, description="column; default: the centre")


ChannelIndex = Annotated[int, Field(ge=0)]


class OptimizationCreate(BaseModel):
    """An activation-maximization job: which units of which layer, and how to optimize."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(
        min_length=1,
        max_length=200,
        examples=["block3.relu"],
        description="dotted layer name; see GET /v1/models/{model}/layers",
    )
    objective: ObjectiveKind | None = Field(
        default=None,
        description="what to maximise; default: 'neuron' when `neuron` is given, else 'channel'",
    )
    channels: list[ChannelIndex] | Literal["all"] = Field(
        default="all",
        description=f"channel (or class) indices, one image each, at most {MAX_UNITS}; or 'all' "
        "(objectives 'channel' and 'class_logit')",
        examples=[[0, 5, 7], "all"],
    )
    neuron: NeuronSpec | None = Field(default=None, description="objective 'neuron' only")
    direction: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=8192,
        description="a vector in the layer's channel space (objective 'direction' only)",
    )
    steps: int = Field(default=256, ge=1, le=MAX_STEPS, description="optimizer steps")
    image_size: int | None = Field(
        default=None,
        ge=16,
        le=MAX_IMAGE_SIZE,
        description="side of the square images; default: the model's input size",
    )
    lr: float = Field(default=0.05, gt=0, le=1, description="Adam learning rate")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="same seed, same images")
    param: Literal["fourier", "pixel"] = Field(
        default="fourier", description="image parameterization"
    )
    decorrelate: bool = Field(default=True, description="decorrelated colour (3-channel models)")
    transforms: Literal["standard", "none"] = Field(
        default="standard", description="random jitter, scale and rotation each step, or none"
    )
    images_per_unit: int = Field(
        default=1,
        ge=1,
        le=8,
        description="images optimized for each unit; with `diversity`, different ones",
    )
    diversity: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="weight of Lucid's diversity term among the images of one unit "
        "(needs images_per_unit >= 2), on the scale of the unit's objective: too large a "
        "weight trades the objective away for variety",
    )
    l1: float = Field(default=0.0, ge=0, le=100, description="L1 penalty weight on the image")
    l2: float = Field(default=0.0, ge=0, le=100, description="L2 penalty weight on the image")
    tv: float = Field(default=0.0, ge=0, le=100, description="total-variation penalty weight")
    redirect_relu_steps: int = Field(
        default=16,
        ge=0,
        le=MAX_STEPS,
        description="redirect ReLU gradients for the first N steps, so units that start "
        "inactive get a gradient (0: off)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.objective is None:
            self.objective = ObjectiveKind.NEURON if self.neuron else ObjectiveKind.CHANNEL
        kind = self.objective
        if kind == ObjectiveKind.NEURON and self.neuron is None:
            raise ValueError("objective 'neuron' needs `neuron`: {channel, y, x}")
        if kind != ObjectiveKind.NEURON and self.neuron is not None:
            raise ValueError(f"`neuron` is only for objective 'neuron', not {kind.value!r}")
        if kind == ObjectiveKind.DIRECTION and self.direction is None:
            raise ValueError("objective 'direction' needs `direction`: a list of numbers")
        if kind != ObjectiveKind.DIRECTION and self.direction is not None:
            raise ValueError(f"`direction` is only for objective 'direction', not {kind.value!r}")
        if isinstance(self.channels, list):
            if not 1 <= len(self.channels) * self.images_per_unit <= MAX_UNITS:
                raise ValueError(
                    f"`channels` × `images_per_unit` must be 1 to {MAX_UNITS} images, got "
                    f"{len(self.channels)} × {self.images_per_unit}"
                )
            if len(set(self.channels)) != len(self.channels):
                raise ValueError("`channels` has duplicates")
        if self.diversity > 0 and self.images_per_unit < 2:
            raise ValueError(
                "`diversity` compares the images of one unit: set images_per_unit >= 2"
            )
        if kind == ObjectiveKind.LAYER and self.images_per_unit > 1:
            raise ValueError("objective 'layer' optimizes one image; images_per_unit must be 1")
        return self

    def fingerprint(self, model: str) -> str:
        """A canonical string of everything that determines the job (defaults included)."""
        body = self.model_dump(mode="json")
        return json.dumps({"model": model, **body}, sort_keys=True, separators=(",", ":"))


class Progress(BaseModel):
    """Where a running job is."""

    step: int = Field(ge=0, description="steps done")
    total: int = Field(ge=1, description="steps in all")
    objectives: list[float] = Field(description="current objective value of each unit")
    preview_step: int | None = Field(
        default=None, description="step of the latest preview image, if one was taken"
    )


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(examples=["timeout", "worker_lost", "invalid_argument", "internal_error"])
    message: str


class UnitResult(BaseModel):
    """One optimized unit."""

    channel: int | None = Field(description="channel or class index; none for a whole layer")
    sample: int = Field(default=0, description="which of the unit's images_per_unit images")
    y: int | None = None
    x: int | None = None
    image: str = Field(description="base64 PNG of the optimized image")
    objective: float = Field(description="final objective value")
    initial_objective: float = Field(description="objective value of the starting noise")


class OptimizationResult(BaseModel):
    """The optimized images, and everything needed to repeat the run."""

    model: str
    layer: str
    objective: ObjectiveKind
    units: list[UnitResult]
    grid: str = Field(description="base64 PNG of all units, tiled in order")
    grid_columns: int
    image_size: int
    seed: int
    settings: dict[str, Any] = Field(description="the render settings actually used")
    device: str
    elapsed_s: float


class JobRead(BaseModel):
    """A job as the API shows it."""

    id: str
    model: str
    status: JobStatus
    request: OptimizationCreate
    progress: Progress | None = None
    attempts: int = Field(default=0, description="deliveries to a worker (more after a loss)")
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    result: OptimizationResult | None = None


class OptimizationTask(BaseModel):
    """The task message: small JSON, the job's id and resolved request, never tensors."""

    job_id: str
    model: str
    request: OptimizationCreate = Field(description="with objective and channels resolved")
    ttl_seconds: int = Field(ge=1, description="how long the record lives after it finishes")


# ---- The job record as stored in Redis --------------------------------------------------------
# A hash at ``record_key(id)`` of string fields: id, model, status, request (JSON), created_at,
# started_at, finished_at (epoch seconds), attempts, progress (JSON), error (JSON),
# cancel ("1" once asked), idem (the idempotency key that maps to this job, if any).
# The result is a separate string key, written once (SET NX); the preview a separate PNG.

KEY_PREFIX = "cnnviz:job:"
# A Lua condition on a record's status ``st``: the job has finished (for the Redis scripts).
LUA_FINISHED = " or ".join(f"st == '{s.value}'" for s in JobStatus if s.finished)


def record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}"


def result_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:result"


def preview_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:preview"


def idempotency_key(digest: str) -> str:
    return f"cnnviz:idem:{digest}"


def reuse_key(digest: str) -> str:
    """The latest job of a request (its fingerprint's digest), for serving repeats from it."""
    return f"cnnviz:reuse:{digest}"


class JobRecord(BaseModel):
    """The job record both the service and the workers read and write."""

    id: str
    model: str
    status: JobStatus
    request: OptimizationCreate
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    progress: Progress | None = None
    error: JobError | None = None
    cancel: bool = False
    idem: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields; absent values are left out."""
        fields = {
            "id": self.id,
            "model": self.model,
            "status": self.status.value,
            "request": self.request.model_dump_json(),
            "created_at": repr(self.created_at),
            "attempts": str(self.attempts),
            "cancel": "1" if self.cancel else "0",
        }
        if self.started_at is not None:
            fields["started_at"] = repr(self.started_at)
        if self.finished_at is not None:
            fields["finished_at"] = repr(self.finished_at)
        if self.progress is not None:
            fields["progress"] = self.progress.model_dump_json()
        if self.error is not None:
            fields["error"] = self.error.model_dump_json()
        if self.idem is not None:
            fields["idem"] = self.idem
        return fields

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> JobRecord:
        """Parse a hash as redis-py returns it (bytes or str keys and values)."""
        f = {_text(k): _text(v) for k, v in raw.items()}

        def number(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return cls(
            id=f["id"],
            model=f["model"],
            status=JobStatus(f["status"]),
            request=OptimizationCreate.model_validate_json(f["request"]),
            created_at=float(f["created_at"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            attempts=int(f.get("attempts") or 0),
            progress=Progress.model_validate_json(f["progress"]) if f.get("progress") else None,
            error=JobError.model_validate_json(f["error"]) if f.get("error") else None,
            cancel=f.get("cancel") == "1",
            idem=f.get("idem") or None,
        )

    def read(self, result: OptimizationResult | None = None) -> JobRead:
        """The API view of this record."""
        return JobRead(
            id=self.id,
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
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
