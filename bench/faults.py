"""Benchmark: how long each fault of the fault matrix takes to recover from.

Runs the cases of ``tests/faults`` (real processes: the API under uvicorn, Celery worker
groups, redis-server on a port of its own) ``--repeat`` times each, checking in every run
what the tests check (nothing lost, no result written twice, every job ends), and prints
per case, in seconds from the fault (a signal, Redis answering again, SIGCONT, the disk
failing): the API or ``/readyz`` answering again; the interrupted job past the step it had
reached at the fault; every job of the case ended. Median and range over the runs::

    .venv/bin/python bench/faults.py [--repeat 3] [--cases api-sigkill,redis-pause]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Importing the service builds its default app: keep it off the user's data directory (each
# case's API process has a data directory of its own).
os.environ["CNNVIZ_DATA_DIR"] = ":memory:"

from tests.faults import embedded, queue
from tests.faults.watch import Recovery
from tests.jobs.procs import CeleryWorker, RedisServer

Case = Callable[[Path], Recovery]


def _on_redis(run: Callable[[RedisServer, Path], Recovery]) -> Case:
    """A queue case on a Redis of its own (append-only file, fsync always)."""

    def case(workdir: Path) -> Recovery:
        server = RedisServer(workdir, persistent=True).start()
        try:
            return run(server, workdir)
        finally:
            server.stop()

    return case


def _with_worker(run: Callable[[RedisServer, CeleryWorker], Recovery]) -> Case:
    """A Redis case, with a worker of its own on that Redis."""

    def case(server: RedisServer, workdir: Path) -> Recovery:
        worker = CeleryWorker(server.url, workdir, queue.LEASE_SOON).start()
        try:
            return run(server, worker)
        finally:
            worker.stop()

    return _on_redis(case)


# name: (the fault, where its times start, the case)
CASES: dict[str, tuple[str, str, Case]] = {
    "api-sigkill": (
        "API SIGKILLed mid-job (embedded)",
        "the signal",
        lambda w: embedded.api_restarted(w, signal.SIGKILL),
    ),
    "api-sigterm": (
        "API SIGTERMed mid-job (embedded)",
        "the signal",
        lambda w: embedded.api_restarted(w, signal.SIGTERM),
    ),
    "two-apis": (
        "one of two APIs on one data dir SIGKILLed",
        "the signal",
        lambda w: embedded.two_apis(w),
    ),
    "disk": (
        "data dir writes fail (EROFS)",
        "the first failing write",
        lambda w: embedded.disk_fails(w),
    ),
    "worker-group": (
        "Celery worker group SIGKILLed",
        "the signal",
        _on_redis(queue.worker_group_killed),
    ),
    "redis-restart": (
        "Redis SIGKILLed, restarted on its AOF",
        "Redis answering again",
        _with_worker(queue.redis_restarted),
    ),
    "redis-pause": (
        "Redis paused (SIGSTOP) 30 s",
        "SIGCONT",
        _with_worker(queue.redis_paused),
    ),
}


def _cpu() -> str:
    """The processor's model name (Linux), else the machine's type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _span(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "–"
    if len(known) == 1:
        return f"{known[0]:.1f}"
    return f"{statistics.median(known):.1f} ({min(known):.1f}–{max(known):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: %(default)s")
    args = parser.parse_args()
    names = args.cases.split(",")
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")

    print(f"# {_cpu()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start")
    rows = []
    for name in names:
        fault, since, case = CASES[name]
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp:
                started = time.monotonic()
                runs.append(case(Path(tmp)))
                print(f"{name}: {runs[-1]} in {time.monotonic() - started:.0f} s", flush=True)
        rows.append((fault, since, runs))

    print(f"\nload {os.getloadavg()[0]:.1f} at the end; seconds, median (range) of {args.repeat}\n")
    print("| fault | from | API or /readyz answering | job past its step then | all jobs ended |")
    print("|---|---|---|---|---|")
    for fault, since, runs in rows:
        times = [
            _span([getattr(r, f) for r in runs])
            for f in ("answering_s", "progressing_s", "ended_s")
        ]
        print(f"| {fault} | {since} | {' | '.join(times)} |")


if __name__ == "__main__":
    main()
