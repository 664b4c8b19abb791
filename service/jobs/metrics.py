"""Job metrics for ``GET /metrics``, read at scrape time (the scrape runs in a thread).

- ``cnnviz_jobs{kind,status}``: the job records there are now, by kind and status;
- ``cnnviz_job_duration_seconds{kind,status}``: how long finished jobs ran (first start to
  the end), a histogram that every worker adds to in the records' backend;
- ``cnnviz_job_queue_depth``: jobs waiting for a worker;
- ``cnnviz_job_workers``: workers that take jobs (Celery: consumers of the ``gpu`` queue);
- ``cnnviz_job_results_kept_bytes``: in-process only, the bytes finished jobs keep in the
  API's memory (bounded by ``CNNVIZ_INPROCESS_RESULTS_MAX_BYTES``; the rest is in files);
- ``cnnviz_job_results_disk_bytes``: in-process only, the bytes of those files (bounded by
  ``CNNVIZ_INPROCESS_RESULTS_DISK_MAX_BYTES``);
- ``cnnviz_job_leases_lapsed_total{action}``: Celery only, the lapsed leases this API
  process's sweeper claimed: ``job`` and ``shard`` sent again (a worker lost), ``cancelled``;
- ``cnnviz_job_metrics_up``: 0 when the backend could not be read (the others are then
  left out of that scrape).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from schemas.routes import kind_name
from service.jobs.manager import JobManager
from service.jobs.transport import QueueUnavailable
from workers.kinds import kind_names
from workers.records import RecordsUnavailable
from workers.records.memory import MemoryRecords
from workers.records.sqlite import SqliteRecords
from workers.records.stats import Durations, bucket_labels

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobCollector(Collector):
    """Collects the job metrics of one manager's records and transport."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cnnviz_job_metrics_up", "1 when the job records and the queue could be read"
        )
        try:
            metrics = list(self._read())
        except (RecordsUnavailable, QueueUnavailable) as exc:
            log.warning("job metrics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self) -> Iterator[Metric]:
        records, transport = self._jobs.records, self._jobs.transport
        # Stored under a kind's old name too (records, histograms): merged into today's.
        counts: dict[tuple[str, str], int] = {}
        for (kind, status), n in records.counts().items():
            named = (kind_name(kind), status)
            counts[named] = counts.get(named, 0) + n
        histograms: dict[tuple[str, str], Durations] = {}
        for (kind, status), found in records.durations().items():
            histograms.setdefault((kind_name(kind), status), Durations()).add(found)
        jobs = GaugeMetricFamily(
            "cnnviz_jobs", "job records by kind and status", labels=["kind", "status"]
        )
        # Every kind and status, zeros included, so that a rate or an alert has a series.
        for kind in sorted({*kind_names(), *(k for k, _ in counts)}):
            for status in STATUSES:
                jobs.add_metric([kind, status], counts.get((kind, status), 0))
        yield jobs
        durations = HistogramMetricFamily(
            "cnnviz_job_duration_seconds",
            "how long finished jobs ran, from their start to their end",
            labels=["kind", "status"],
        )
        for (kind, status), histogram in sorted(histograms.items()):
            buckets = list(zip(bucket_labels(), histogram.counts, strict=True))
            durations.add_metric([kind, status], buckets, histogram.sum)
        yield durations
        depth = GaugeMetricFamily("cnnviz_job_queue_depth", "jobs waiting for a worker")
        depth.add_metric([], transport.queue_depth())
        yield depth
        workers = GaugeMetricFamily(
            "cnnviz_job_workers", "workers seen taking jobs (Celery: consumers of the queue)"
        )
        workers.add_metric([], transport.workers_seen())
        yield workers
        if isinstance(records, MemoryRecords | SqliteRecords):
            kept = GaugeMetricFamily(
                "cnnviz_job_results_kept_bytes",
                "bytes finished in-process jobs keep (results, previews, raw tensors): in "
                "memory, or in the data directory's store",
            )
            kept.add_metric([], records.kept_bytes)
            yield kept
            on_disk = GaugeMetricFamily(
                "cnnviz_job_results_disk_bytes",
                "bytes of in-process jobs' parts in files: spilled from memory, or the large "
                "parts in the data directory (checkpoints included)",
            )
            on_disk.add_metric([], records.disk_bytes)
            yield on_disk
        sweeper = self._jobs.sweeper
        if sweeper is not None:
            lapsed = CounterMetricFamily(
                "cnnviz_job_leases_lapsed",
                "lapsed leases this process's sweeper claimed: jobs and shards sent again "
                "because their worker was lost, and jobs cancelled",
                labels=["action"],
            )
            for action in ("job", "shard", "cancelled"):
                lapsed.add_metric([action], sweeper.claimed.get(action, 0))
            yield lapsed
