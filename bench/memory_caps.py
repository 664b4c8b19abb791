"""Peak RSS of the API (in-process jobs) under the largest allowed job and many kept results,
against the configured caps.

Starts the API under uvicorn on 127.0.0.1 (in-process transport), and over real HTTP:

1. in a fresh API, runs the largest optimization job the limits admit (``shapes``
   ``block4.relu``, all 128 channels × 4 images of 176 px: the result grid at the 4096²
   pixel limit) with a preview at nearly every step, and reads the peak RSS it adds
   (``VmHWM`` after resetting it), against the render's memory budget (1024 MiB);
2. in another fresh API, runs one job with a large result (128 images of 176 px), then
   ``--jobs`` more (distinct seeds) one after another, and reads the RSS they add (and their
   peak) against ``CNNVIZ_INPROCESS_RESULTS_MAX_BYTES``, and what went to files.

``--against DIR`` runs the same on the checkout in DIR (an older commit, with its own
``PYTHONPATH``) in the same run, for a before/after side by side. Every wait is bounded.

    .venv/bin/python -m bench.memory_caps [--cap-mib 256] [--jobs 12] [--against DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, Server, api_server, machine, rss_mib
from bench.common import run_job as common_run_job

MIB = 1 << 20
BUDGET_MIB = 1024  # RenderSettings.memory_budget_mb, which jobs run with
LARGEST = {
    "layer": "block4.relu",
    "channels": "all",
    "images_per_unit": 4,
    "image_size": 176,
    "steps": 2,
    "seed": 1,
}
KEPT = {"layer": "block4.relu", "channels": "all", "image_size": 176, "steps": 1}


def reset_peak(pid: int) -> None:
    """Set the process's ``VmHWM`` back to its current RSS (Linux, our own process)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_job(client: httpx.Client, body: dict[str, Any], deadline: float) -> dict[str, Any]:
    _, record = common_run_job(
        client,
        "/v1/models/shapes/optimizations",
        body,
        headers={"Cache-Control": "no-cache"},
        params={"inline": "false"},
        poll_s=0.25,
        near_poll_s=0.25,
        deadline=deadline,
    )
    return record


def kept_bytes(client: httpx.Client) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "cnnviz_job_results_kept_bytes":
            return float(family.samples[0].value)
    return None  # an API without the cap


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def warm_up(client: httpx.Client, deadline: float) -> None:
    """A small job: what every job loads once (layer index, optimizer) is not counted."""
    run_job(client, {**KEPT, "channels": [0], "image_size": 32, "seed": 99}, deadline)


def largest_job(server: Server, deadline: float) -> dict[str, float]:
    """The peak RSS the largest job adds to a fresh API."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        warm_up(client, deadline)
        start, _ = rss_mib(server.pid)
        reset_peak(server.pid)
        run_job(client, LARGEST, deadline)
        _, peak = rss_mib(server.pid)
    return {"start": start, "job_peak": peak - start}


def kept_results(
    server: Server, jobs: int, cap: int, results_dir: Path, deadline: float
) -> dict[str, float]:
    """What ``jobs`` finished jobs leave in a fresh API's RSS, and its peak meanwhile.

    The first job of the same size runs before the start is read: a job's own working memory
    (up to its render budget) stays in the process's heap after it ends (the allocator keeps
    it for the next job), and would otherwise be read as kept results.
    """
    with httpx.Client(base_url=server.url, timeout=60) as client:
        run_job(client, {**KEPT, "seed": 999}, deadline)
        start, _ = rss_mib(server.pid)
        reset_peak(server.pid)
        for seed in range(jobs):
            run_job(client, {**KEPT, "seed": 1000 + seed}, deadline)
        # The last results move to files just after the job reads as finished: let them.
        settle = time.monotonic() + 30
        while (kept := kept_bytes(client)) is not None and kept > cap:
            if time.monotonic() > settle:
                break
            time.sleep(0.2)
        time.sleep(1)
        end, peak = rss_mib(server.pid)
    return {
        "kept_rss": end - start,
        "kept_peak": peak - start,
        "kept_bytes": -1 if kept is None else kept / MIB,
        "on_disk": dir_bytes(results_dir) / MIB if results_dir.exists() else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cap-mib", type=int, default=256, help="the results cap")
    parser.add_argument("--jobs", type=int, default=12, help="jobs with kept results")
    parser.add_argument("--against", type=Path, help="a checkout to measure beside this one")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for each API")
    args = parser.parse_args()
    print(machine())
    print(
        f"largest job: {LARGEST}; render budget {BUDGET_MIB} MiB; "
        f"{args.jobs} kept jobs of {KEPT}; results cap {args.cap_mib} MiB"
    )
    roots = [("this checkout", ROOT)]
    if args.against is not None:
        roots.insert(0, (f"against {args.against}", args.against.resolve()))
    rows = []
    for label, root in roots:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results"
            env = {
                "PYTHONPATH": str(root),
                "CNNVIZ_INPROCESS_RESULTS_MAX_BYTES": str(args.cap_mib * MIB),
                "CNNVIZ_INPROCESS_RESULTS_DIR": str(results),
                "CNNVIZ_JOB_PREVIEW_INTERVAL": "0.05",  # a preview at nearly every step
                "CNNVIZ_JOB_PROGRESS_INTERVAL": "0.05",
                "CNNVIZ_JOB_SOFT_TIME_LIMIT": str(args.timeout),
                "CNNVIZ_LOG_LEVEL": "WARNING",
            }
            deadline = time.monotonic() + args.timeout
            with api_server(env, root=root) as server:
                figures = largest_job(server, deadline)
            with api_server(env, root=root) as server:
                figures |= kept_results(server, args.jobs, args.cap_mib * MIB, results, deadline)
            rows.append((label, figures))
    print()
    print(
        f"{'API':30} {'RSS at start':>12} {'largest job: peak added':>24} {'÷ budget':>9} "
        f"{'kept jobs: RSS added (peak)':>28} {'÷ cap':>6} {'kept in memory':>15} "
        f"{'in files':>9}"
    )
    for label, f in rows:
        kept = "n/a" if f["kept_bytes"] < 0 else f"{f['kept_bytes']:.0f} MiB"
        print(
            f"{label:30} {f['start']:8.0f} MiB {f['job_peak']:20.0f} MiB "
            f"{f['job_peak'] / BUDGET_MIB:9.2f} "
            f"{f['kept_rss']:12.0f} MiB ({f['kept_peak']:5.0f} MiB) "
            f"{f['kept_rss'] / args.cap_mib:6.2f} {kept:>15} {f['on_disk']:5.0f} MiB"
        )


if __name__ == "__main__":
    main()
