"""Feature maps with 8 clients while an optimization job runs in the same API process: does
the job starve the synchronous path? Today's service and the service at ``--before``, side by
side in one run.

Each server is ``uvicorn service.main:app`` with the embedded defaults (in-process jobs, no
Redis). A round, for each server in turn:

1. a burst of ``--clients`` clients (each with its own keep-alive connection) posting
   ``shapes`` feature maps (``bench.feature_maps``' case) for ``--seconds``, nothing else
   running: requests/s *alone*;
2. an optimization job on the same server (``shapes`` ``block3.relu``, every channel, 4096
   steps, 64 px, a new seed each round), and, once it is running, the job alone for
   ``--seconds``: its steps/s *alone*;
3. the same burst with the job running: requests/s and the job's steps/s *beside* each other;
4. the job cancelled, and its end awaited.

Printed: medians over ``--rounds``; for each server the requests/s beside a job ÷ alone (the
issue's old figure: 177 ÷ 240 = 0.74) and the job's steps/s beside the burst ÷ alone; and
today ÷ before for requests/s beside a job.

    .venv/bin/python -m bench.beside_job [--before /tmp/before] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Server, api_server, machine, models_file
from bench.feature_maps import burst

JOB = {"layer": "block3.relu", "channels": "all", "steps": 4096, "image_size": 64}


def _progress(client: httpx.Client, job_id: str) -> tuple[str, int]:
    record: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
    return record["status"], int((record.get("progress") or {}).get("step", 0))


def _steps_per_second(client: httpx.Client, job_id: str, seconds: float) -> float:
    _, before = _progress(client, job_id)
    time.sleep(seconds)
    _, after = _progress(client, job_id)
    return (after - before) / seconds


def one_round(server: Server, clients: int, seconds: float, seed: int) -> dict[str, float]:
    alone, _, _ = burst(server.url, "shapes", clients, seconds)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body = {**JOB, "seed": seed}
        created = client.post("/v1/models/shapes/optimizations", json=body).raise_for_status()
        job_id = created.json()["id"]
        deadline = time.monotonic() + 60
        status, step = _progress(client, job_id)
        while (status == "queued" or (status == "running" and step < 20)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)  # started, and past its first steps (tracing, planning)
            status, step = _progress(client, job_id)
        if status != "running":
            raise RuntimeError(f"the job {job_id} is {status}, not running")
        job_alone = _steps_per_second(client, job_id, seconds)
        _, first = _progress(client, job_id)
        started = time.perf_counter()
        beside, _, errors = burst(server.url, "shapes", clients, seconds)
        elapsed = time.perf_counter() - started
        status, last = _progress(client, job_id)
        if status != "running":
            raise RuntimeError(f"the job {job_id} ended during the burst: {status}")
        client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
        while _progress(client, job_id)[0] == "running":
            time.sleep(0.1)
    return {
        "alone": alone,
        "beside": beside,
        "errors": errors,
        "job_alone": job_alone,
        "job_beside": (last - first) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="/tmp/before", help="worktree of the old code")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a burst")
    args = parser.parse_args()
    print(machine())
    before = Path(args.before).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CNNVIZ_MODELS_FILE": str(models_file(Path(tmp)))}
        old_env = {**env, "PYTHONPATH": str(before)}
        with api_server(env) as now, api_server(old_env, root=before) as old:
            servers = {"today": now, "before": old}
            for server in servers.values():  # warm-up: loading, tracing, kernels
                burst(server.url, "shapes", args.clients, 1.0)
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for k in range(args.rounds):  # alternate, so both see the same load
                for name, server in servers.items():
                    rounds[name].append(one_round(server, args.clients, args.seconds, 100 + k))
    print(
        f"{args.clients} clients, shapes feature maps, medians of {args.rounds} rounds of "
        f"{args.seconds:.0f} s bursts; job: shapes {JOB['layer']}, every channel, 64 px"
    )
    medians = {}
    for name, figures in rounds.items():
        m = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
        medians[name] = m
        errors = sum(int(f["errors"]) for f in figures)
        print(
            f"  {name:6}: alone {m['alone']:6.1f} req/s, beside a job {m['beside']:6.1f} req/s "
            f"({m['beside'] / m['alone']:4.2f}; {errors} errors); the job "
            f"{m['job_alone']:5.1f} steps/s alone, {m['job_beside']:5.1f} beside "
            f"({m['job_beside'] / m['job_alone']:4.2f})"
        )
    ratio = medians["today"]["beside"] / medians["before"]["beside"]
    print(f"  beside a job, today ÷ before: {ratio:4.2f} (before: {before})")


if __name__ == "__main__":
    main()
