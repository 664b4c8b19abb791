"""Benchmark: what the job queue costs, as ratios measured side by side in one run.

1. Submit-to-result wall time of a 200-step job through the API, Celery and a real worker,
   divided by the job function's own run time in this process for the same job (target:
   at most 1.1).
2. Jobs per second for 20 short jobs submitted at once, with one worker and with two.

Starts its own redis-server on a free port and its own workers; needs no Redis running.
Both sides use the same number of torch threads (``--threads``), so the ratio measures the
queue, not a different thread count::

    .venv/bin/python bench/jobs.py [--repeats 5] [--threads 1] [--device cpu|cuda]

With ``--device cuda`` the workers run their jobs on the GPU (``CNNVIZ_WORKER_DEVICE``) and
the in-process side does too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz.models import LoadedModel, ModelRegistry
from schemas.optimization import OptimizationCreate
from service.main import create_app
from service.settings import Settings
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for
from workers.kinds.optimization import optimize, prepare

LONG: dict[str, Any] = {
    "layer": "block3.relu",
    "channels": [0, 1, 2, 3],
    "steps": 200,
    "image_size": 64,
}
SHORT: dict[str, Any] = {"layer": "block3.relu", "channels": [0], "steps": 16, "image_size": 32}


def in_process_seconds(loaded: LoadedModel, body: dict[str, Any]) -> float:
    """The job function's own run time, model loaded (and warm after the first call)."""
    request = prepare(OptimizationCreate.model_validate(body), loaded)
    started = time.perf_counter()
    optimize(request, loaded)
    return time.perf_counter() - started


def submit_to_result(api: Any, model: str, body: dict[str, Any]) -> tuple[float, float]:
    """Seconds from POST to the moment GET returns the result, and the run time the worker
    measured itself (the result's ``elapsed_s``)."""
    started = time.perf_counter()
    response = api.post(f"/v1/models/{model}/optimizations", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]

    # Poll the way a patient client would: every 100 ms while the job is far from done, then
    # every 5 ms, so polling neither costs the CPU the job needs nor adds to the wall time.
    while True:
        record: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
        if record["status"] == "succeeded":
            return time.perf_counter() - started, float(record["result"]["elapsed_s"])
        if record["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {record['status']}")
        progress = record.get("progress") or {"step": 0, "total": 1}
        time.sleep(0.1 if progress["step"] < 0.9 * progress["total"] else 0.005)


def throughput(api: Any, model: str, n: int, first_seed: int) -> float:
    """Jobs per second for ``n`` short jobs submitted at once, until the last one is done.
    Seeds ``first_seed`` onwards: a job the service has already run would be answered from
    its result, not run again."""
    bodies = [{**SHORT, "seed": seed} for seed in range(first_seed, first_seed + n)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        ids = list(
            pool.map(
                lambda b: api.post(f"/v1/models/{model}/optimizations", json=b).json()["id"],
                bodies,
            )
        )
    for job_id in ids:

        def succeeded(j: str = job_id) -> bool:
            return bool(api.get(f"/v1/jobs/{j}").json()["status"] == "succeeded")

        wait_for(succeeded, 600, f"job {job_id}", interval=0.02)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--models-file", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="the workers' and this side's device")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = {"CNNVIZ_WORKER_TORCH_THREADS": str(args.threads), "CNNVIZ_WORKER_DEVICE": args.device}
    if args.models_file:
        env["CNNVIZ_MODELS_FILE"] = args.models_file

    registry = ModelRegistry.from_file(args.models_file, device=torch.device(args.device))
    loaded = registry.get(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir).start()
        workers = [CeleryWorker(redis_server.url, workdir, env).start()]
        try:
            settings = Settings(redis_url=redis_server.url, models_file=args.models_file)
            with serve(create_app(settings)) as api:
                # A new seed for every job sent: the service answers a job it has already run
                # from its result.
                submit_to_result(api, args.model, {**LONG, "seed": 0})  # warm the worker's child
                in_process_seconds(loaded, LONG)  # warm here
                direct, queued, inside = [], [], []
                for repeat in range(1, args.repeats + 1):  # interleaved against drift
                    body = {**LONG, "seed": repeat}
                    direct.append(in_process_seconds(loaded, body))
                    total, worker_side = submit_to_result(api, args.model, body)
                    queued.append(total)
                    inside.append(worker_side)
                one = throughput(api, args.model, args.jobs, first_seed=0)
                workers.append(CeleryWorker(redis_server.url, workdir, env).start())
                throughput(api, args.model, 2, first_seed=args.jobs)  # warm the second child
                two = throughput(api, args.model, args.jobs, first_seed=args.jobs + 2)
        finally:
            for worker in workers:
                worker.stop()
            redis_server.stop()

    d, q = statistics.median(direct), statistics.median(queued)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, "
        f"{args.threads} torch thread(s) on each side"
    )
    print(
        f"200-step job, {len(LONG['channels'])} units at {LONG['image_size']} px, "
        f"median of {args.repeats}:"
    )
    print(f"  job function in-process   {d:7.3f} s")
    print(f"  submit-to-result (Celery) {q:7.3f} s")
    print(f"    of which in the worker  {statistics.median(inside):7.3f} s")
    print(f"  ratio                     {q / d:7.3f}   (target <= 1.1)")
    print(f"{args.jobs} short jobs ({SHORT['steps']} steps, {SHORT['image_size']} px) at once:")
    print(f"  1 worker   {one:6.2f} jobs/s")
    print(f"  2 workers  {two:6.2f} jobs/s   ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
