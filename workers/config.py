"""Settings read from ``CNNVIZ_*`` environment variables: what the API and the workers both
read (:class:`JobSettings`), and a worker process's own (:class:`WorkerSettings`).

The same ``CNNVIZ_REDIS_URL`` as the API's points a worker at the broker, the result backend
and the job records.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import torch

    from cnnviz.data.datasets import DatasetRegistry
    from cnnviz.models import ModelRegistry
    from workers.compile import CompilePolicy

__all__ = [
    "MEMORY",
    "JobSettings",
    "WorkerSettings",
    "comma_separated",
    "default_data_dir",
    "get_worker_settings",
]

MEMORY = ":memory:"
"""``CNNVIZ_DATA_DIR`` for in-process job records in memory, lost when the process stops."""


def default_data_dir() -> str:
    """``$XDG_DATA_HOME/cnnviz``, else ``~/.local/share/cnnviz`` (the XDG base directories)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "cnnviz")


def comma_separated(value: str | None) -> list[str]:
    """The entries of a comma-separated setting, stripped, the empty ones left out."""
    return [entry.strip() for entry in (value or "").split(",") if entry.strip()]


class JobSettings(BaseSettings):
    """What the API (which runs in-process jobs and admits queued ones) and the workers both
    read: one declaration, one ``CNNVIZ_*`` variable, one default. A real difference between
    the two is an explicit override in the subclass, with its reason."""

    model_config = SettingsConfigDict(env_prefix="CNNVIZ_", env_file=None, extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis: Celery broker, result backend and job records; unset: jobs run "
        "in the API process",
    )
    models_file: Path | None = Field(
        default=None, description="TOML file of extra models; unset: the built-in model only"
    )
    data_dir: str = Field(
        default_factory=default_data_dir,
        description="where the service keeps its data, created on start: the in-process "
        "jobs' database (jobs.db), their large results (results/), the models registered "
        "at run time (models/) and the compiled steps (compile-cache/), so that they "
        "survive a restart. Default $XDG_DATA_HOME/cnnviz, else ~/.local/share/cnnviz; "
        "':memory:' keeps in-process jobs in memory, lost when the process stops",
    )
    model_store: Path | None = Field(
        default=None,
        description="the directory of models registered at run time (PUT /v1/models/{name}), "
        "the same for the API and the workers (one path, or a shared volume); default: "
        "models/ under CNNVIZ_DATA_DIR (under the default data directory with ':memory:')",
    )
    models_poll_interval: float = Field(
        default=1.0,
        ge=0,
        description="seconds between looks at the models file and the model store for "
        "changes, which are read without a restart",
    )
    keep_freed_memory: bool = Field(
        default=True,
        description="serve CPU tensors from one heap and keep freed memory for the next step "
        "or request rather than map and fault it in again (glibc; see cnnviz.allocator); the "
        "free memory goes back to the system when a job ends",
    )
    job_soft_time_limit: float = Field(
        default=1800, gt=0, description="seconds; the job fails with a timeout error"
    )
    job_checkpoint_steps: int = Field(
        default=25,
        ge=0,
        description="optimization steps between checkpoints, which a job's next attempt "
        "resumes from (0: none)",
    )
    job_checkpoint_interval: float = Field(
        default=10,
        ge=0,
        description="the least seconds between two checkpoints (a whole layer's state is tens "
        "of MiB to serialize and store)",
    )
    job_progress_interval: float = Field(default=0.5, gt=0, description="seconds")
    job_preview_interval: float = Field(default=2.0, gt=0, description="seconds")
    redis_results_max_bytes: int | None = Field(
        default=None,
        ge=0,
        description="bytes finished jobs may keep in Redis (result JSON, last preview, raw "
        "arrays); past it the oldest finished jobs' are deleted and read as 410 "
        "result_expired; queued and running jobs are never touched. Unset: no cap but "
        "Redis's maxmemory (see docs/reliability.md). A job's final write enforces it: set "
        "it on the API and the workers alike",
    )
    exemplar_shard_images: int = Field(
        default=2048, ge=1, description="images per shard of an exemplars job"
    )
    exemplar_loader_workers: int = Field(
        default=2, ge=0, le=32, description="DataLoader processes that decode images per job"
    )
    exemplar_batch_size: int = Field(default=64, ge=1, le=4096)
    worker_memory_budget_mb: int = Field(
        default=1024,  # a CPU's: cnnviz.optvis.settings.DEFAULT_MEMORY_BUDGET_MB (torch)
        ge=1,
        description="MiB: the memory budget a queued job is checked against when no live "
        "worker of its queue has published its own (workers publish their device's budget "
        "every CNNVIZ_WORKER_HEARTBEAT_INTERVAL seconds)",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="whether optimization jobs run their steps compiled (torch.compile), "
        "decided per job at submit and recorded: 'on' always (a job compiles the step first "
        "where it is not in the cache), 'off' never, 'auto' once the step is in the cache; "
        "until then jobs run eagerly while, where compiling pays (CUDA; a CPU running bf16), "
        "it compiles in the background (see docs/compile.md)",
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="inductor's caches of compiled steps, shared by every process of the "
        "machine (a volume in compose): a process loads what another compiled; default "
        "compile-cache/ under CNNVIZ_DATA_DIR (under the default data directory with "
        "':memory:')",
    )
    compile_warmup: str = Field(
        default="",
        description="model:layer pairs, comma-separated, whose optimization steps the "
        "process compiles in the background at start (unless CNNVIZ_COMPILE is off)",
    )

    @property
    def data_path(self) -> Path | None:
        """The data directory; None for ``:memory:``."""
        return None if self.data_dir.strip() == MEMORY else Path(self.data_dir).expanduser()

    @property
    def model_store_path(self) -> Path:
        """Where registered models are kept: ``model_store``, else ``models/`` in the data
        directory."""
        if self.model_store is not None:
            return self.model_store
        return (self.data_path or Path(default_data_dir())) / "models"

    @model_validator(mode="after")
    def _warmup_pairs(self) -> Self:
        self.compile_warmup_pairs()  # a bad entry stops the process at start, not later
        return self

    @property
    def compile_cache_path(self) -> Path:
        """``compile_cache_dir``, else ``compile-cache/`` in the data directory."""
        if self.compile_cache_dir is not None:
            return self.compile_cache_dir
        return (self.data_path or Path(default_data_dir())) / "compile-cache"

    def compile_policy(self) -> CompilePolicy:
        """How this process's optimization jobs compile (its cache set up for inductor)."""
        from workers.compile import CompilePolicy

        policy = CompilePolicy(self.compile, self.compile_cache_path)
        policy.setup()
        return policy

    def compile_warmup_pairs(self) -> tuple[tuple[str, str], ...]:
        """``compile_warmup`` as ``(model, layer)`` pairs."""
        from workers.compile import parse_warmup

        return parse_warmup(self.compile_warmup)

    def model_registry(self, device: str | torch.device) -> ModelRegistry:
        """The models of the models file and the model store, read again as they change."""
        from cnnviz.models import ModelRegistry  # torch: imported by who builds models only

        return ModelRegistry.from_file(
            self.models_file,
            device=device,
            store=self.model_store_path,
            poll_interval_s=self.models_poll_interval,
        )

    def dataset_registry(self) -> DatasetRegistry:
        """The data sets of the models file, read again as it changes."""
        from cnnviz.data.datasets import DatasetRegistry

        return DatasetRegistry.from_file(
            self.models_file, poll_interval_s=self.models_poll_interval
        )


class WorkerSettings(JobSettings):
    """One instance per worker process (:func:`get_worker_settings`)."""

    # A worker has no in-process fallback: it always needs the broker (compose's by default).
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis: Celery broker, result backend and job records",
    )
    worker_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$",
        description="auto: cuda:N (N = pool child index modulo the GPUs) when CUDA is "
        "available, else cpu; or cpu, cuda, cuda:N, mps",
    )
    worker_torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="cores the pool children share: each child running a job gets cores ÷ "
        "children running jobs torch threads (all of them alone); unset: every core",
    )
    job_time_limit: float = Field(
        default=1860, gt=0, description="seconds; the child is killed (a job stuck in C code)"
    )
    broker_visibility_timeout: float = Field(
        default=3900, gt=0, description="seconds an unacknowledged job waits before redelivery"
    )
    broker_restore_interval: float = Field(
        default=30, gt=0, description="seconds between sweeps for jobs of lost workers"
    )
    job_lease_interval: float = Field(
        default=5, gt=0, description="seconds between renewals of a running job's lease"
    )
    job_lease_timeout: float = Field(
        default=30,
        gt=0,
        description="seconds a lease lasts from its last renewal; then the job's worker counts "
        "as lost and the API's sweeper sends the job again",
    )
    job_max_attempts: int = Field(
        default=3, ge=1, description="deliveries of one job before it fails as worker_lost"
    )
    worker_heartbeat_interval: float = Field(
        default=10,
        gt=0,
        description="seconds between refreshes of the device and memory budget this worker "
        "publishes in Redis for the API's admission; it expires 3 intervals after the last",
    )
    worker_max_tasks_per_child: int = Field(
        default=200, ge=1, description="jobs before a pool child is replaced"
    )
    worker_soft_shutdown_timeout: float = Field(
        default=60, ge=0, description="seconds a stopping worker lets its running job go on"
    )
    result_expires: int = Field(
        default=24 * 3600, ge=60, description="seconds Celery keeps a task's small summary"
    )

    @model_validator(mode="after")
    def _limits_in_order(self) -> Self:
        # A job still running when its message becomes visible again would be delivered to a
        # second worker; a soft limit past the hard one would never fire.
        if not self.job_soft_time_limit < self.job_time_limit < self.broker_visibility_timeout:
            raise ValueError(
                "need CNNVIZ_JOB_SOFT_TIME_LIMIT < CNNVIZ_JOB_TIME_LIMIT < "
                f"CNNVIZ_BROKER_VISIBILITY_TIMEOUT, got {self.job_soft_time_limit}, "
                f"{self.job_time_limit}, {self.broker_visibility_timeout}"
            )
        # A lease renewed less often than it lasts would lapse under a worker that is fine.
        if not self.job_lease_interval * 2 <= self.job_lease_timeout:
            raise ValueError(
                "need 2 × CNNVIZ_JOB_LEASE_INTERVAL <= CNNVIZ_JOB_LEASE_TIMEOUT, got "
                f"{self.job_lease_interval} and {self.job_lease_timeout}"
            )
        return self


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """The worker's settings, read once."""
    return WorkerSettings()
