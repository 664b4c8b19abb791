"""A soak: rounds of small optimization jobs beside feature-map clients; does memory grow?

The API is ``uvicorn service.main:app`` with the embedded defaults (``make serve``: in-process
jobs, no Redis), or, with ``--transport celery``, the API with a real Celery worker (prefork,
one child) on a ``redis-server`` of its own. A round: ``--jobs`` optimization jobs submitted at
once (``--model``'s ``--layer``, one channel, ``--steps`` steps, a new seed each, never
served from a stored result) while ``--clients`` clients post feature maps, until every job
has finished. After each round, printed: jobs finished, the API's resident memory, the
``cnnviz_job_results_kept_bytes`` metric (what finished jobs keep, in-process), and, with
Celery, the pool child's resident memory.

The verdict compares the last round with the first rounds' (``--warmup``, where caches and
the allocator's pools fill): flat means within 5%.

    .venv/bin/python -m bench.soak [--rounds 10] [--jobs 30] [--transport celery]
    .venv/bin/python -m bench.soak --model resnet18 --layer layer3 --steps 4 --image-size 64
    .venv/bin/python -m bench.soak --root /tmp/before   # the API of another commit's worktree
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import api_server, machine, models_file, rss_mib
from bench.feature_maps import burst
from tests.jobs.procs import CeleryWorker, RedisServer

FLAT = 0.05


def kept_bytes(client: httpx.Client) -> float:
    """The in-process results' kept bytes, from ``/metrics`` (0 where not exported)."""
    text = client.get("/metrics").text
    found = re.search(r"^cnnviz_job_results_kept_bytes\s+(\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def job_round(client: httpx.Client, args: argparse.Namespace, first_seed: int) -> int:
    """Submit ``args.jobs`` jobs at once and wait for all: how many succeeded."""
    ids = []
    for seed in range(first_seed, first_seed + args.jobs):
        body = {
            "layer": args.layer,
            "channels": [seed % 8],
            "steps": args.steps,
            "image_size": args.image_size,
            "seed": seed,
        }
        response = client.post(
            f"/v1/models/{args.model}/optimizations",
            json=body,
            headers={"Cache-Control": "no-cache"},
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    succeeded = 0
    deadline = time.monotonic() + 600
    for job_id in ids:
        while time.monotonic() < deadline:
            status = client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                succeeded += status == "succeeded"
                break
            time.sleep(0.1)
    return succeeded


def feature_map_clients(url: str, clients: int, stop: threading.Event) -> None:
    """Bursts of ``clients`` feature-map clients (``shapes``) until ``stop`` is set."""
    while not stop.is_set():
        burst(url, "shapes", clients, 1.0)


def soak(url: str, args: argparse.Namespace, memory: Callable[[], list[float]]) -> list[float]:
    """Run the rounds, print a line each; the API's resident MiB after each round."""
    rows: list[float] = []
    finished = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        print(f"{'round':>5} {'jobs':>6} {'API RSS MiB':>12} {'kept KB':>9}  other")
        before = memory()
        print(f"{0:5d} {0:6d} {before[0]:12.1f} {kept_bytes(client) / 1e3:9.1f}  {before[1:]}")
        for index in range(args.rounds):
            stop = threading.Event()
            beside = threading.Thread(target=feature_map_clients, args=(url, args.clients, stop))
            beside.start()
            try:
                finished += job_round(client, args, first_seed=1000 * (index + 1))
            finally:
                stop.set()
                beside.join()
            now = memory()
            rows.append(now[0])
            kept = kept_bytes(client) / 1e3
            print(f"{index + 1:5d} {finished:6d} {now[0]:12.1f} {kept:9.1f}  {now[1:]}")
    return rows


def verdict(rows: list[float], warmup: int, what: str) -> None:
    settled = max(rows[:warmup])
    growth = rows[-1] / settled - 1
    state = "flat" if growth <= FLAT else "GROWING"
    print(
        f"{what}: last round {rows[-1]:.1f} MiB ÷ the first {warmup} rounds' highest "
        f"{settled:.1f} MiB = {1 + growth:.3f} ({state}, the bar is {1 + FLAT:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--model", default="shapes", choices=["shapes", "resnet18"])
    parser.add_argument("--layer", default="block2.relu")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--transport", default="in-process", choices=["in-process", "celery"])
    parser.add_argument(
        "--root", type=Path, default=None, help="the API from another checkout (a worktree)"
    )
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the table
    print(machine())
    print(
        f"{args.rounds} rounds of {args.jobs} jobs ({args.model} {args.layer}, one channel, "
        f"{args.steps} steps, {args.image_size} px) beside {args.clients} feature-map clients, "
        f"{args.transport}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        env = {"CNNVIZ_MODELS_FILE": str(models_file(work)), "CNNVIZ_LOG_LEVEL": "WARNING"}
        if args.transport == "in-process":
            where = {} if args.root is None else {"root": args.root}
            if args.root is not None:
                env["PYTHONPATH"] = str(args.root)
            with api_server(env, **where) as server:
                rows = soak(server.url, args, lambda: [rss_mib(server.pid)[0]])
            verdict(rows, args.warmup, "API")
            return
        redis = RedisServer(work).start()
        # A recycled child would hide growth: this one lives for the whole soak.
        recycle = {"CNNVIZ_WORKER_MAX_TASKS_PER_CHILD": str(args.rounds * args.jobs + 1)}
        worker = CeleryWorker(redis.url, work, {**env, **recycle})
        try:
            worker.start()
            with api_server({**env, "CNNVIZ_REDIS_URL": redis.url}) as server:
                children: list[list[float]] = []

                def memory() -> list[float]:
                    child = [rss_mib(pid)[0] for pid in worker.pool_children()]
                    children.append(child)
                    return [rss_mib(server.pid)[0], *child]

                rows = soak(server.url, args, memory)
            verdict(rows, args.warmup, "API")
            verdict([c[0] for c in children[1:]], args.warmup, "pool child")
        finally:
            worker.stop()
            redis.stop()


if __name__ == "__main__":
    main()
