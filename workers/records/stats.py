"""Job metrics that every process adds to and the API reads: running time per kind and
final status, as a cumulative histogram kept in the records' backend (so Celery workers on
many machines add to one histogram that the API's ``/metrics`` shows)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Seconds: short jobs on a GPU up to the default soft time limit (1800 s) and beyond.
DURATION_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass
class Durations:
    """A histogram of job running times: ``counts[i]`` jobs took at most
    ``DURATION_BUCKETS[i]`` seconds (cumulative), the last entry is every job (``+Inf``)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate((*DURATION_BUCKETS, math.inf)):
            if seconds <= bound:
                self.counts[i] += 1
        self.sum += seconds

    def add(self, other: Durations) -> None:
        """Count ``other``'s jobs here too."""
        self.counts = [
            mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)
        ]
        self.sum += other.sum


def bucket_labels() -> list[str]:
    """The ``le`` label of each bucket, ``+Inf`` last."""
    return [f"{bound:g}" for bound in DURATION_BUCKETS] + ["+Inf"]
