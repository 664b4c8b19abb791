"""The settings of the API process, read from ``CNNVIZ_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from workers.config import JobSettings, comma_separated


class Settings(JobSettings):
    """One instance per process (:func:`get_settings`); tests build their own. The job
    settings it shares with the workers are declared once, in :class:`JobSettings`."""

    # In-process exemplar jobs decode in the job's own thread: DataLoader processes would be
    # forked from the API process, which runs threads (uvicorn's, torch's), and a fork of a
    # threaded process may inherit a lock held by a thread that does not exist in the child.
    exemplar_loader_workers: int = Field(
        default=0, ge=0, le=32, description="DataLoader processes of in-process exemplar jobs"
    )

    device: str = Field(default="cpu", description="torch device of the synchronous path")
    api_keys: str | None = Field(
        default=None,
        description="comma-separated API keys; unset: no key needed. Set but empty (or with "
        "an empty key between commas) is refused at start: it would turn auth off silently",
    )
    admin_keys: str | None = Field(
        default=None,
        description="comma-separated keys that may register and remove models "
        "(PUT and DELETE /v1/models/{name}); each is also an API key. Unset: those routes "
        "are off (404)",
    )
    model_upload_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="the largest weights file PUT /v1/models/{name} takes (bytes); larger is a 413",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    body_read_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a request body may take to arrive in full; then 408 and the "
        "connection is closed (slow clients cannot hold connections open)",
    )
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64)
    sync_concurrency: int = Field(default=2, ge=1, description="torch calls run at once")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="cores the torch work of the API process shares (synchronous requests and "
        "in-process jobs): each running call gets cores ÷ running calls threads, so one alone "
        "uses them all; default: every core the process may run on",
    )
    sync_batch_max: int = Field(
        default=8, ge=1, le=64, description="most images of one batched forward pass (1: off)"
    )
    sync_batch_delay_ms: float = Field(
        default=4.0,
        ge=0,
        le=100,
        description="how long a forward pass waits for requests on their way to join it",
    )
    sync_backlog: int = Field(
        default=16, ge=0, description="requests that may wait for a torch slot before 503"
    )
    # 2.5 M admits one target of a one-pass method (Grad-CAM, saliency) with the default
    # metrics on a 64×64 model: (1 + 2 × 33 × 9) × 64 × 64 = 2.44 M image-pixels.
    attribution_max_pixels: int = Field(
        default=2_500_000,
        ge=1,
        description="image-pixels (images × height × width) an attribution request may run "
        "through the model synchronously (integrated gradients: steps × targets; occlusion: "
        "patches; metrics: (metric_steps + 1) × (targets + random_maps) per metric); past "
        "it, a 422 pointing to the job route",
    )
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, description="job record TTL")
    inprocess_job_workers: int = Field(default=1, ge=1, le=8)
    inprocess_job_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="how much lower the in-process job threads' scheduling priority is than "
        "the API's (Linux niceness): a core that a synchronous request wants goes to it "
        "first, and beside running requests a job steps on with one thread, pausing between "
        "steps as long as its last step took; alone a job still uses every core. 0: the same "
        "priority, a fair share beside requests and no pause",
    )
    inprocess_job_backlog: int = Field(
        default=64, ge=0, description="in-process jobs that may wait for a worker before 503"
    )
    inprocess_results_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="with CNNVIZ_DATA_DIR=:memory:, bytes the finished in-process jobs may "
        "keep in the API's memory (result JSON, last preview, raw tensors); past it the oldest "
        "finished jobs' go first, to files or nowhere (CNNVIZ_INPROCESS_RESULTS_OVERFLOW). "
        "Unfinished jobs are never touched. (With a data directory nothing is kept in memory: "
        "the disk cap bounds the results)",
    )
    inprocess_results_overflow: Literal["spill", "evict"] = Field(
        default="spill",
        description="with CNNVIZ_DATA_DIR=:memory:, 'spill': results past the memory cap move "
        "to files and read the same; 'evict': they are dropped and read as 410 result_expired",
    )
    inprocess_results_disk_max_bytes: int = Field(
        default=4 * 1024 * 1024 * 1024,
        ge=0,
        description="bytes finished in-process jobs' results may take on disk: in the data "
        "directory (database and results/), or the spilled files with :memory:; past it the "
        "oldest finished jobs' results are removed (read as 410 result_expired), and a result "
        "larger than it is dropped",
    )
    inprocess_results_dir: Path | None = Field(
        default=None,
        description="deprecated: the folder of large results is CNNVIZ_DATA_DIR/results; set, "
        "it replaces that folder (with :memory:, where spilled results go; unset there: a "
        "temporary directory removed when the process stops)",
    )
    max_active_jobs_per_owner: int = Field(
        default=32,
        ge=1,
        description="queued and running jobs one owner (API key, or everyone when there are "
        "no keys) may have; one more is a 429 with Retry-After",
    )
    max_job_work: int = Field(
        default=2**33,
        ge=1,
        description="steps × images × image pixels one job may ask for; more is a 422 before "
        "anything is queued (the default lets 512 images of 224 px run 256 steps)",
    )
    inline_result_max_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="a succeeded job's JSON carries its pictures as base64 when they take at "
        "most this many characters in all (else only their URLs; ?inline=true asks for them)",
    )
    events_poll_interval: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="seconds between looks at a job's record for "
        "its event stream (GET /v1/jobs/{id}/events)",
    )
    events_heartbeat_interval: float = Field(
        default=15, gt=0, description="seconds of quiet before an event stream sends a comment"
    )
    events_max_seconds: float = Field(
        default=3600, gt=0, description="the longest an event stream lasts; the client asks again"
    )
    callback_hosts: str = Field(
        default="",
        description="comma-separated host names a job's callback_url may name (any port); "
        "empty: callbacks are refused",
    )
    callback_secret: str = Field(
        default="", description="the HMAC-SHA256 key of callback signatures"
    )
    callback_attempts: int = Field(default=4, ge=1, le=10, description="tries per callback")
    callback_backoff: float = Field(
        default=0.5, ge=0, le=60, description="seconds before the 2nd try; doubled after each"
    )
    callback_poll_interval: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="seconds between the API's looks for due callbacks (a job's end, or a "
        "retry whose backoff is over), which it delivers",
    )
    lease_sweep_interval: float = Field(
        default=10,
        ge=0,
        description="seconds between the API's sweeps for jobs whose worker was lost (their "
        "lease lapsed), which it sends again; 0: no sweeping (Celery's visibility timeout "
        "alone then gives them back)",
    )
    queue_check_interval: float = Field(
        default=5.0, ge=0, description="seconds /readyz reuses its count of queue workers"
    )

    log_format: Literal["plain", "json"] = Field(
        default="plain", description="'json': one JSON object a log line, with the request id"
    )
    log_level: str = Field(default="INFO", description="level of the root logger")
    cors_origins: str = Field(
        default="",
        description="comma-separated origins allowed to call the API from a browser ('*' for "
        "any); empty: no CORS headers",
    )

    @property
    def cors_origin_list(self) -> list[str]:
        return comma_separated(self.cors_origins)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _no_empty_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        keys = [key.strip() for key in value.split(",")]
        if not all(keys):
            variable = f"CNNVIZ_{(info.field_name or '').upper()}"
            raise ValueError(
                f"{variable} is set but has {'no key' if not any(keys) else 'an empty key'} "
                f"({len(keys)} comma-separated entries, {keys.count('')} empty); list the keys "
                "separated by commas, or unset the variable to run without keys"
            )
        return value

    @property
    def callback_host_set(self) -> frozenset[str]:
        return frozenset(host.lower() for host in comma_separated(self.callback_hosts))

    @model_validator(mode="after")
    def _callbacks_signed(self) -> Self:
        if self.callback_hosts.strip() and not self.callback_secret:
            raise ValueError(
                "CNNVIZ_CALLBACK_HOSTS is set but CNNVIZ_CALLBACK_SECRET is empty: callbacks "
                "are always signed; set a secret"
            )
        return self

    @property
    def api_key_list(self) -> list[str]:
        """The keys that may call the API: the API keys, and the admin keys with them."""
        keys = comma_separated(self.api_keys)
        return [*keys, *(k for k in self.admin_key_list if k not in keys)] if keys else []

    @property
    def admin_key_list(self) -> list[str]:
        return comma_separated(self.admin_keys)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
