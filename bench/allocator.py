"""Kept freed memory (``CNNVIZ_KEEP_FREED_MEMORY``, on by default) against glibc's defaults,
through the running service, side by side in one run.

Two ``uvicorn service.main:app`` processes with the embedded defaults and resnet18 with random
weights: one as shipped, one with ``CNNVIZ_KEEP_FREED_MEMORY=false``. Both are running; the
work alternates between them, round by round:

1. an optimization job of ``--channels`` channels of ``layer3`` (``--steps`` steps, 128 px
   images fed at 224, default settings otherwise): wall seconds from the POST to the result,
   and the CPU seconds (user, system) and minor page faults of the server process;
2. 8 clients posting ``resnet18`` ``layer2`` feature maps for ``--seconds``: requests/s, and
   CPU seconds per answered request.

Then each server's resident memory, and once more after the jobs (the kept memory goes back
when a job ends). Medians of ``--rounds``; ratios are default ÷ glibc's defaults for time,
so below 1 is faster.

    .venv/bin/python -m bench.allocator [--channels 16] [--steps 32] [--rounds 3]
        [--seconds 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import Server, api_server, machine, models_file, rss_mib, run_job, usage
from bench.feature_maps import burst


def med(values: list[float] | list[int]) -> float:
    """The median, or nan for a measurement not taken (``--only``)."""
    return statistics.median(values) if values else math.nan


@dataclass
class Figures:
    job_s: list[float] = field(default_factory=list)
    job_user: list[float] = field(default_factory=list)
    job_sys: list[float] = field(default_factory=list)
    job_faults: list[int] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)


def one_job(server: Server, body: dict[str, object], figures: Figures) -> None:
    user, system, faults = usage(server.pid)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        seconds, _ = run_job(client, "/v1/models/resnet18/optimizations", body, poll_s=0.2)
    user2, system2, faults2 = usage(server.pid)
    figures.job_s.append(seconds)
    figures.job_user.append(user2 - user)
    figures.job_sys.append(system2 - system)
    figures.job_faults.append(faults2 - faults)


def one_burst(server: Server, seconds: float, figures: Figures) -> None:
    user, system, _ = usage(server.pid)
    rate, answered, _ = burst(server.url, "resnet18", 8, seconds)
    user2, system2, _ = usage(server.pid)
    figures.rate.append(rate)
    figures.cpu_per_request.append((user2 + system2 - user - system) / max(1, answered))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="of one 8-client burst")
    parser.add_argument("--only", choices=("jobs", "maps"), help="one of the two measurements")
    args = parser.parse_args()
    print(machine())
    body: dict[str, object] = {
        "layer": "layer3",
        "channels": list(range(args.channels)),
        "steps": args.steps,
        "image_size": 128,
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CNNVIZ_MODELS_FILE": str(models_file(Path(tmp)))}
        with (
            api_server(env) as kept,
            api_server({**env, "CNNVIZ_KEEP_FREED_MEMORY": "false"}) as plain,
        ):
            servers = {"kept (default)": kept, "glibc defaults": plain}
            figures = {name: Figures() for name in servers}
            for server in servers.values():  # warm-up: model, tracing, kernels
                if args.only != "maps":
                    one_job(server, {**body, "steps": 2, "seed": 10_000}, Figures())
                burst(server.url, "resnet18", 8, 1.0)
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    if args.only != "maps":
                        one_job(server, {**body, "seed": round_}, figures[name])
                for name, server in servers.items():
                    if args.only != "jobs":
                        one_burst(server, args.seconds, figures[name])
                print(f"  round {round_ + 1} done", flush=True)
            memory = {name: rss_mib(server.pid) for name, server in servers.items()}
    n = args.channels * args.steps
    print(
        f"resnet18 (random weights) layer3, a job of {args.channels} channels x {args.steps} "
        f"steps, 128 px fed at 224; 8 clients of layer2 feature maps; medians of {args.rounds}"
    )
    print(
        f"{'':16} {'job s':>7} {'ms/img/step':>11} {'user s':>7} {'sys s':>6} "
        f"{'faults/img/step':>15} {'req/s':>6} {'CPU ms/req':>10} {'RSS now/peak MiB':>17}"
    )
    for name, f in figures.items():
        now, peak = memory[name]
        print(
            f"{name:16} {med(f.job_s):7.2f} "
            f"{med(f.job_s) / n * 1000:11.1f} "
            f"{med(f.job_user):7.1f} {med(f.job_sys):6.1f} "
            f"{med(f.job_faults) / n:15.0f} {med(f.rate):6.1f} "
            f"{med(f.cpu_per_request) * 1000:10.1f} {now:8.0f}/{peak:.0f}"
        )
    a, b = figures["kept (default)"], figures["glibc defaults"]
    job = med(a.job_s) / med(b.job_s)
    cpu = (med(a.job_user) + med(a.job_sys)) / (med(b.job_user) + med(b.job_sys))
    rate = med(a.rate) / med(b.rate)
    print(
        f"kept ÷ glibc defaults: job wall {job:.2f}, job CPU {cpu:.2f}, "
        f"8-client feature maps req/s {rate:.2f} (higher is better)"
    )


if __name__ == "__main__":
    main()
