"""Throughput of POST feature-maps on ``shapes`` with 8 concurrent clients.

A real server (uvicorn in a subprocess, the default settings) and 8 client threads, each with
its own keep-alive connection, each uploading a 64×64 PNG and asking for two layers, for a fixed
time. Prints requests/s, p50 and p99 latency, and the errors (any status but 200), which
should be zero: 8 clients fit the default pool (2 running, 16 waiting).

    .venv/bin/python -m bench.throughput [--clients 8] [--seconds 20] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

import httpx

from bench.common import api_server, machine, ms, percentile, png_bytes
from cnnviz.data.shapes import sample_image

URL = "/v1/models/shapes/feature-maps"
FIELDS = {"layers": ["block1.conv", "block3.conv"]}


def client_loop(
    base_url: str,
    upload: bytes,
    stop_at: float,
    latencies: list[float],
    statuses: collections.Counter[int],
    lock: threading.Lock,
) -> None:
    files = {"image": ("triangle.png", upload, "image/png")}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                status = client.post(URL, files=files, data=FIELDS).status_code
            except httpx.HTTPError:
                status = 0
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                statuses[status] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="OMP_NUM_THREADS of the server"
    )
    args = parser.parse_args()
    print(machine())
    env = {} if args.torch_threads is None else {"OMP_NUM_THREADS": str(args.torch_threads)}
    upload = png_bytes(sample_image("triangle"))
    with api_server(env) as server:
        with httpx.Client(base_url=server.url, timeout=60) as warm:
            for _ in range(5):
                warm.post(
                    URL, files={"image": ("t.png", upload, "image/png")}, data=FIELDS
                ).raise_for_status()
        latencies: list[float] = []
        statuses: collections.Counter[int] = collections.Counter()
        lock = threading.Lock()
        start = time.perf_counter()
        stop_at = start + args.seconds
        threads = [
            threading.Thread(
                target=client_loop,
                args=(server.url, upload, stop_at, latencies, statuses, lock),
            )
            for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    errors = sum(count for status, count in statuses.items() if status != 200)
    threads_note = args.torch_threads or "default"
    print(
        f"{args.clients} clients, {elapsed:.1f} s, shapes, 2 layers, torch threads {threads_note}"
    )
    print(f"  requests    {len(latencies)}  ({len(latencies) / elapsed:.1f} req/s)")
    print(f"  latency p50 {ms(percentile(latencies, 50))}")
    print(f"  latency p99 {ms(percentile(latencies, 99))}")
    print(f"  errors      {errors}  {dict(statuses)}")


if __name__ == "__main__":
    main()
