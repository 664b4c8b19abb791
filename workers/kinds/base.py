"""What a job kind is: its request, how it is resolved, how it runs, and its result.

A kind is one subclass of :class:`JobKind` in one module, registered with
:func:`workers.kinds.register_kind`. The runner (:mod:`workers.run`), both transports and the
API look kinds up by name; nothing dispatches on a kind's name.

A job runs as one or more **shards**: :meth:`JobKind.shards` says how many, each shard runs
:meth:`JobKind.run_shard` and returns a small JSON partial, and :meth:`JobKind.merge` makes
the result of the partials in shard order. A kind that does not split (optimization) has
one shard (:class:`OneShardJobKind`); a kind over a data set cuts it into shards
(:class:`workers.kinds.dataset_kind.DatasetJobKind`). The in-process transport runs the
shards one after another; Celery runs them as tasks on any number of workers, and the shard
that finishes last merges them.
"""

from __future__ import annotations

import base64
import io
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, get_args

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel
from torch.utils.data import DataLoader

from cnnviz.data.datasets import Dataset, DatasetRegistry
from cnnviz.data.loader import ModelInputs, model_batches
from cnnviz.imaging import encode_png, image_grid
from cnnviz.models import LoadedModel, ModelRegistry
from cnnviz.threads import CoreShare
from schemas.jobs import Admission, JobRead, Progress
from schemas.routes import JobRoute
from workers.compile import CompilePolicy
from workers.config import JobSettings
from workers.records.verdicts import Verdicts

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

MAX_IMAGE_PIXELS = 40_000_000
"""The most pixels a request's image decodes to, unless the deployment says otherwise."""

Partial = dict[str, Any]
"""A shard's output: small JSON (it travels through the Celery result backend)."""


class JobCancelled(Exception):
    """Raised between steps when the job was asked to stop (or its attempt superseded)."""


class JobTimedOut(Exception):
    """Raised between steps when the job ran past its soft time limit."""


class Blobs(Protocol):
    """Where a request's large inputs are kept by their sha256 (the job records), so that
    the task message names them instead of carrying them."""

    def put_blob(self, digest: str, data: bytes, ttl_seconds: int) -> None: ...

    def blob(self, digest: str) -> bytes | None: ...


@dataclass
class Resources:
    """What a kind may use: the models, the data sets, and the deployment's settings.

    One per process (the API's, or a worker pool child's), on that process's device.
    ``shard_images`` is the most images one shard of a data-set job handles. ``cores``: the
    share of the CPU cores a running shard takes part in (the API's with its requests, or the
    pool children's); None: torch's own thread count. ``background``: jobs claim their share
    as background work (:meth:`~cnnviz.threads.CoreShare.claim`), which yields the cores to
    the synchronous requests of the same share (in-process jobs, on threads of lower
    priority). ``loader_workers``: the DataLoader
    processes that decode images ahead of the model (0: in the job's own process);
    ``batch_size``: the images of one forward pass;
    ``max_job_work`` caps what one job may ask for (steps × images × pixels for an
    optimization), checked when the API prepares a job (None: no cap, as in the workers,
    which run what the API admitted). ``blobs``: where a request's images are kept by
    reference, for ``blob_ttl_seconds`` (None: nowhere, they stay in the request);
    ``max_image_pixels``: the most pixels a request's image may decode to. ``admission``: what
    a job's size is checked against when it will run elsewhere (a Celery worker's budget);
    None: this process's device. ``compile``: whether optimization jobs compile their
    steps (:mod:`workers.compile`; off unless the settings say otherwise).
    """

    models: ModelRegistry
    datasets: DatasetRegistry = field(default_factory=DatasetRegistry)
    shard_images: int = 2048
    cores: CoreShare | None = None
    background: bool = False
    loader_workers: int = 0
    batch_size: int = 64
    max_job_work: int | None = None
    blobs: Blobs | None = None
    blob_ttl_seconds: int = 7 * 24 * 3600
    max_image_pixels: int = MAX_IMAGE_PIXELS
    admission: Admission | None = None
    compile: CompilePolicy = field(default_factory=CompilePolicy)

    @classmethod
    def from_settings(
        cls,
        settings: JobSettings,
        models: ModelRegistry,
        datasets: DatasetRegistry,
        cores: CoreShare | None,
        **process: Any,
    ) -> Resources:
        """The resources ``settings`` describe, for the API and the workers alike;
        ``process``: what only one side sets (``background``, ``max_job_work``, ``blobs``)."""
        return cls(
            models=models,
            datasets=datasets,
            shard_images=settings.exemplar_shard_images,
            loader_workers=settings.exemplar_loader_workers,
            batch_size=settings.exemplar_batch_size,
            cores=cores,
            compile=settings.compile_policy(),
            **process,
        )

    def model(self, name: str) -> LoadedModel:
        return self.models.get(name)

    def shard_indices(self, shard: int, total: int) -> range:
        """The images of ``shard`` of a data set of ``total``: ``shard_images`` each."""
        return range(shard * self.shard_images, min((shard + 1) * self.shard_images, total))

    def batches(
        self,
        loaded: LoadedModel,
        dataset: Dataset,
        indices: Sequence[int],
        inputs: type[ModelInputs] = ModelInputs,
    ) -> DataLoader[Any]:
        """Batches of ``dataset``'s images ``indices`` prepared for ``loaded`` (its input size,
        colour mode and normalisation), decoded by the loader processes, on its device."""
        spec = loaded.spec
        prepared = inputs(
            dataset,
            indices,
            size=spec.input_size,
            channels=spec.channels,
            mean=spec.mean,
            std=spec.std,
        )
        return model_batches(
            prepared, batch_size=self.batch_size, workers=self.loader_workers, device=loaded.device
        )


@dataclass(frozen=True)
class Reference:
    """An earlier job a request names: in which field, and the kinds it may be."""

    field: str
    kinds: tuple[str, ...]


ProgressCallback = Callable[[Progress, bytes | None], None]
"""``(progress, preview_png_or_None)``."""


class JobContext:
    """A running shard's link to its record: progress out, cancellation and deadline in.

    ``report`` is called at most every ``progress_interval_s`` (and on the first and last
    report); a kind asks :meth:`preview_due` before it pays for a preview picture.

    A kind that can resume (optimization) saves its state every ``checkpoint_steps`` steps,
    when :meth:`checkpoint_due` (at most every ``checkpoint_interval_s``), through
    :meth:`save_checkpoint`; ``resume`` is the latest state an earlier attempt saved, which a
    new attempt goes on from.
    """

    def __init__(
        self,
        *,
        job_id: str = "",
        on_progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        deadline: float | None = None,
        progress_interval_s: float = 0.5,
        preview_interval_s: float = 2.0,
        on_attach: Callable[[bytes], None] | None = None,
        on_checkpoint: Callable[[bytes], None] | None = None,
        checkpoint_steps: int = 0,
        checkpoint_interval_s: float = 0.0,
        resume: bytes | None = None,
    ) -> None:
        self.job_id = job_id
        self._on_checkpoint = on_checkpoint
        self.checkpoint_steps = checkpoint_steps if on_checkpoint is not None else 0
        self._checkpoint_interval_s = checkpoint_interval_s
        self._last_checkpoint = time.monotonic()
        self.resume = resume
        self._on_attach = on_attach
        self._on_progress = on_progress
        self._should_cancel = should_cancel
        self._deadline = deadline
        self._progress_interval_s = progress_interval_s
        self._preview_interval_s = preview_interval_s
        self._last_report = -math.inf
        self._last_preview = -math.inf
        self._reports = 0

    def check(self) -> None:
        """Raise JobCancelled or JobTimedOut when the shard must stop; call it every step."""
        if self._should_cancel is not None and self._should_cancel():
            raise JobCancelled(self.job_id)
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise JobTimedOut(self.job_id)

    @property
    def reporting(self) -> bool:
        return self._on_progress is not None

    def progress_due(self, last: bool = False) -> bool:
        """Whether a report now would be sent (first, last, or the interval has passed)."""
        if self._on_progress is None:
            return False
        now = time.monotonic()
        return last or self._reports == 0 or now - self._last_report >= self._progress_interval_s

    def preview_due(self) -> bool:
        return time.monotonic() - self._last_preview >= self._preview_interval_s

    def attach(self, arrays: bytes) -> None:
        """Keep the shard's raw float tensors (safetensors bytes) with the job's result,
        served as ``GET /v1/jobs/{id}/result.npy`` and ``.safetensors``."""
        if self._on_attach is not None:
            self._on_attach(arrays)

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint now would be kept (the interval has passed since the last)."""
        if self._on_checkpoint is None:
            return False
        return time.monotonic() - self._last_checkpoint >= self._checkpoint_interval_s

    def save_checkpoint(self, state: bytes) -> None:
        """Keep the shard's state for a later attempt to resume from (replacing the last)."""
        if self._on_checkpoint is not None:
            self._last_checkpoint = time.monotonic()
            self._on_checkpoint(state)

    def report(self, progress: Progress, preview: bytes | None = None) -> None:
        """Send progress (and a preview PNG, if one was made because it was due)."""
        if self._on_progress is None:
            return
        now = time.monotonic()
        self._last_report = now
        self._reports += 1
        if preview is not None:
            self._last_preview = now
        self._on_progress(progress, preview)


@dataclass(frozen=True)
class ResultPictures:
    """A succeeded job's pictures as its stored result holds them (base64 PNGs): one per unit
    in the result's order, and the grid of them all (None: the API tiles the units)."""

    units: list[str]
    grid: str | None = None

    @property
    def size(self) -> int:
        """Characters of base64 in all."""
        return len(self.grid or "") + sum(len(unit) for unit in self.units)

    def unit_png(self, index: int) -> bytes:
        return base64.b64decode(self.units[index])

    def grid_png(self) -> bytes:
        """The grid as PNG bytes: the kind's own, or the units tiled in order on white."""
        if self.grid is not None:
            return base64.b64decode(self.grid)
        images = []
        for i in range(len(self.units)):
            with Image.open(io.BytesIO(self.unit_png(i))) as picture:
                rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
            images.append(torch.from_numpy(rgb).permute(2, 0, 1))  # (3, H, W) in [0, 1]
        grid, _ = image_grid(torch.stack(images))
        return encode_png(grid)


class JobKind(ABC, Generic[RequestT, ResultT]):
    """One kind of job. Subclasses set the class attributes and implement the methods."""

    route: ClassVar[JobRoute]
    """How it is asked for over HTTP (declared beside its schema)."""
    name: ClassVar[str]
    """The kind's name in records, messages and ``JobRead.kind``: its route's ``kind``."""
    request_type: type[RequestT]
    result_type: type[ResultT]
    """The two types a kind parametrizes its base with: ``JobKind[Request, Result]``."""
    progress_unit: ClassVar[str] = "steps"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "route" in cls.__dict__:
            cls.name = cls.route.kind
        for base in getattr(cls, "__orig_bases__", ()):
            types = get_args(base)
            if len(types) == 2 and all(isinstance(t, type) for t in types):
                cls.request_type, cls.result_type = types

    @abstractmethod
    def prepare(self, request: RequestT, model: str, resources: Resources) -> RequestT:
        """The request with defaults resolved, checked against the model (and data).

        Raises the core's errors (unknown layer, a channel out of range, ...) so a bad
        request is refused before it is queued; cheap, runs in the API too.
        """

    def references(self, request: RequestT) -> dict[str, Reference]:
        """The caller's earlier jobs that ``request`` reads, by id (none by default). The
        service checks each before :meth:`prepare`: the caller's, of one of its kinds,
        succeeded, on the same weights; then :meth:`link` copies what it needs of them."""
        return {}

    def link(
        self,
        request: RequestT,
        model: str,
        jobs: Mapping[str, JobRead[Any, Any]],
        resources: Resources,
    ) -> RequestT:
        """The prepared request with what it needs of its :meth:`references` (``jobs``, each
        succeeded, with its result) copied in, so that a job never reads another when it runs.
        Raises InvalidArgumentError for a job that does not fit (another model or layer)."""
        return request

    def shards(self, request: RequestT, model: str, resources: Resources) -> int:
        """How many shards the job runs as (at least 1)."""
        return 1

    def work(self, request: RequestT, model: str, resources: Resources) -> int:
        """The job's total work in ``progress_unit``s, for progress summed over shards."""
        return 1

    @abstractmethod
    def run_shard(
        self,
        request: RequestT,
        model: str,
        shard: int,
        resources: Resources,
        context: JobContext,
    ) -> Partial:
        """Run one shard; its partial result as small JSON."""

    @abstractmethod
    def merge(
        self, request: RequestT, model: str, partials: list[Partial], resources: Resources
    ) -> ResultT:
        """The job's result from its shards' partials, in shard order."""

    def finalize(
        self, result: ResultT, request: RequestT, model: str, weights: str | None, kept: Verdicts
    ) -> ResultT:
        """The merged result as it is written: where a kind keeps what outlives its job, or
        reads it (sanity-check verdicts, under ``model`` and ``weights``: the sha256 of the
        weights the job ran, None where they have none)."""
        return result

    # ---- a succeeded job's files (GET /v1/jobs/{id}/result.png, units/{i}.png) ----

    pictures_elsewhere: ClassVar[str] = ""
    """For a kind without pictures in its result: where its pictures are drawn, a path with
    ``{id}`` for the job's id (named in the 404 of result.png)."""

    def pictures(self, result: ResultT) -> ResultPictures | None:
        """The result's pictures; None for a kind whose result has none."""
        return None

    def present(self, result: ResultT, job_id: str, inline: bool) -> ResultT:
        """The result as the API shows it: picture URLs filled in, and the base64 pictures
        left out unless ``inline``."""
        return result

    def parse(self, request: dict[str, Any]) -> RequestT:
        """The typed request of a record or a message."""
        return self.request_type.model_validate(request)


class OneShardJobKind(JobKind[RequestT, ResultT]):
    """A kind that runs as one shard (it does not split): :meth:`run` makes the result, the
    shard's partial is that result as JSON, and the merge reads it back."""

    @abstractmethod
    def run(
        self, request: RequestT, model: str, resources: Resources, context: JobContext
    ) -> ResultT:
        """Run the job; its result."""

    def run_shard(
        self, request: RequestT, model: str, shard: int, resources: Resources, context: JobContext
    ) -> Partial:
        return self.run(request, model, resources, context).model_dump(mode="json")

    def merge(
        self, request: RequestT, model: str, partials: list[Partial], resources: Resources
    ) -> ResultT:
        (only,) = partials
        return self.result_type.model_validate(only)
