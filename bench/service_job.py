"""A whole layer's job through the running service ÷ a plain fp32 Lucid-style loop, per channel.

The path a user takes: ``uvicorn service.main:app`` in a subprocess with the embedded defaults
(in-process jobs, no Redis) and a models file serving torchvision resnet18 with random weights
as ``r18``; ``POST /v1/models/r18/optimizations`` with default settings but for the sizes
(``layer``, ``channels``: ``all`` by default, ``steps``, ``image_size``; a new seed each
round, so no result is reused), then ``GET /v1/jobs/{id}`` until it succeeds. Timed from the
POST to the response that carries the result, divided by the channels.

The floor: :mod:`bench.lucid_floor` in another process (plain torch, fp32, the whole network,
the same parameterization, transforms, steps and sizes), one whole render per round of
``--floor-channels`` channels optimized together as one batch (8 by default: on a 2-core CPU
an fp32 step of resnet18 costs least per image at a batch of about 8, so this is the floor's
best case; ``--floor-channels 1`` is Lucid's one unit at a time), per channel. Its cost per
channel does not depend on which channels, so it is not run over the whole layer. With
torch's default threads and, as ``--floor-threads`` says, with OpenMP's passive wait policy or
a fixed thread count. The two sides alternate round by round on the same machine; the
figures are medians. Target: the floor's seconds per channel ÷ the job's >= 3. Each round
also gives the CPU seconds each side used (the server's process, the floor's), a figure that
other work on the same cores changes far less than wall time.

``--compile on`` (CNNVIZ_COMPILE) with ``--compile-cache DIR`` (CNNVIZ_COMPILE_CACHE_DIR):
the warm-up job, of the same shapes as the rounds, is then the cold-cache figure (it compiles
the step, or loads it where an earlier run left DIR warm) and the rounds the warm-cache one;
run twice with the same DIR for a second process on a warm disk cache.

``--lucent PYTHON`` also runs Lucent itself (``bench/lucent_render.py --serve`` under that
interpreter, a venv with torch-lucent: see that file), one render of ``--floor-channels``
channels per round beside the others, and prints the job's time per channel ÷ Lucent's.

    .venv/bin/python -m bench.service_job [--layer layer3] [--channels all] [--steps 64]
        [--size 128] [--floor-channels 8] [--rounds 2] [--device cpu|cuda]
        [--compile auto|on|off] [--compile-cache DIR] [--lucent /tmp/lucent/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, api_server, cpu_seconds, machine
from bench.common import run_job as common_run_job

MODELS_TOML = """
[models.r18]
arch = "resnet18"
weights = "random"
input_size = [{input}, {input}]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""


def run_job(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds from POST to the GET that returns the result, and that result."""
    seconds, record = common_run_job(client, "/v1/models/r18/optimizations", body, poll_s=0.2)
    return seconds, record["result"]


class FloorProcess:
    """A side run in a subprocess that speaks :mod:`bench.lucid_floor`'s protocol (the floor
    itself, or ``bench/lucent_render.py --serve``); :meth:`render` times one whole render."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self._read()

    @classmethod
    def floor(cls, args: argparse.Namespace, threads: str) -> FloorProcess:
        """:mod:`bench.lucid_floor` with ``threads`` (see ``--floor-threads``)."""
        env = dict(os.environ)
        if threads == "passive":  # OpenMP threads that sleep instead of spinning when idle
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        elif threads != "default":
            env["OMP_NUM_THREADS"] = threads
        command = [sys.executable, "-m", "bench.lucid_floor", "--layer", args.layer]
        command += [*cls._sizes(args), "--input", str(args.input), "--device", args.device]
        return cls(command, env)

    @classmethod
    def lucent(cls, args: argparse.Namespace) -> FloorProcess:
        """Lucent itself under ``args.lucent`` (its own venv), torch's default threads."""
        command = [args.lucent, "bench/lucent_render.py", "--serve", "--layer", args.layer]
        command += [*cls._sizes(args), "--input", str(args.input)]
        return cls(command, dict(os.environ))

    @staticmethod
    def _sizes(args: argparse.Namespace) -> list[str]:
        return [
            *("--channels", str(args.floor_channels), "--steps", str(args.steps)),
            *("--size", str(args.size)),
        ]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor process exited with {self.process.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def render(self, command: str = "run") -> tuple[float, float]:
        """Wall seconds of one render, and the CPU seconds the process used for it."""
        assert self.process.stdin is not None
        cpu = cpu_seconds(self.process.pid)
        self.process.stdin.write(f"{command}\n")
        self.process.stdin.flush()
        seconds = float(self._read()["seconds"])
        return seconds, cpu_seconds(self.process.pid) - cpu

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument(
        "--channels", default="all", help="the job's channels: 'all' (the layer) or N (0..N-1)"
    )
    parser.add_argument(
        "--floor-channels", type=int, default=8, help="channels of one floor render (a batch)"
    )
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="image_size of the job")
    parser.add_argument("--input", type=int, default=224, help="the model's input size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="CNNVIZ_DEVICE and the floor's device")
    parser.add_argument(
        "--floor-threads",
        default="default",
        help="comma-separated: one floor process per entry, 'default' (torch's own count), "
        "'passive' (the same with OMP_WAIT_POLICY=PASSIVE) or an OMP_NUM_THREADS: on a "
        "machine shared with other work, OpenMP threads spinning for a busy core make the "
        "default far slower than one thread",
    )
    parser.add_argument("--compile", default="auto", help="CNNVIZ_COMPILE of the server")
    parser.add_argument("--compile-cache", default="", help="CNNVIZ_COMPILE_CACHE_DIR")
    parser.add_argument("--lucent", default="", help="a Python with torch-lucent: Lucent too")
    args = parser.parse_args()
    print(machine())
    channels: str | list[int] = "all" if args.channels == "all" else list(range(int(args.channels)))
    body: dict[str, Any] = {
        "layer": args.layer,
        "channels": channels,
        "steps": args.steps,
        "image_size": args.size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "models.toml"
        toml.write_text(MODELS_TOML.format(input=args.input), encoding="utf-8")
        env = {"CNNVIZ_MODELS_FILE": str(toml), "CNNVIZ_DEVICE": args.device}
        env["CNNVIZ_COMPILE"] = args.compile
        env["CNNVIZ_COMPILE_CACHE_DIR"] = args.compile_cache or str(Path(tmp) / "compile")
        floors = {t: FloorProcess.floor(args, t) for t in args.floor_threads.split(",")}
        if args.lucent:
            floors["lucent"] = FloorProcess.lucent(args)
        try:
            with api_server(env) as server, httpx.Client(base_url=server.url, timeout=60) as c:
                # Warm-up: model loading and tracing in the server, kernels on both sides, and
                # the compile of the step (or its load from the cache) with --compile on.
                # Past the 16 redirected steps (eager), so that the compiled graph runs.
                warm_s, warm = run_job(c, {**body, "steps": 18, "seed": 10_000})
                print(
                    f"  warm-up job (18 steps; compile {warm['settings'].get('compile')}): "
                    f"{warm_s:6.2f} s",
                    flush=True,
                )
                for floor in floors.values():
                    floor.render("warm")  # kernels and allocator
                floor_s: dict[str, list[float]] = {t: [] for t in floors}
                floor_cpu: dict[str, list[float]] = {t: [] for t in floors}
                job_s: list[float] = []
                job_cpu: list[float] = []
                result: dict[str, Any] = {}
                for round_ in range(args.rounds):  # alternate, so all see the same load
                    cpu = cpu_seconds(server.pid)
                    seconds, result = run_job(c, {**body, "seed": round_})
                    job_s.append(seconds)
                    job_cpu.append(cpu_seconds(server.pid) - cpu)
                    line = f"  round {round_ + 1}: job {seconds:6.2f} s (CPU {job_cpu[-1]:.1f} s)"
                    for threads, floor in floors.items():
                        wall, used = floor.render()
                        floor_s[threads].append(wall)
                        floor_cpu[threads].append(used)
                        line += f", floor ({threads} threads) {wall:6.2f} s (CPU {used:.1f} s)"
                    line += f"; load average {os.getloadavg()[0]:.1f}"
                    print(line, flush=True)
        finally:
            for floor in floors.values():
                floor.close()
    n = len(result["units"])
    job = statistics.median(job_s) / n
    job_c = statistics.median(job_cpu) / n
    print(
        f"resnet18 (random weights) {args.layer}, a job of {n} channels, a floor render of "
        f"{args.floor_channels}, {args.steps} steps, "
        f"{args.size} px fed at {args.input}, device {args.device}, median of {args.rounds}"
    )
    print(
        f"  job through the service (precision {result.get('precision')}, compile "
        f"{result['settings'].get('compile')}, "
        f"server-side {result.get('elapsed_s', 0):.2f} s): {job:6.3f} s per channel "
        f"({job_c:.3f} CPU s)"
    )
    for threads, floor in floors.items():
        base = statistics.median(floor_s[threads]) / args.floor_channels
        base_c = statistics.median(floor_cpu[threads]) / args.floor_channels
        if threads == "lucent":
            print(
                f"  Lucent itself ({floor.info['threads']} threads, {args.floor_channels} "
                f"channels batched): {base:6.3f} s per channel; the job takes {job / base:5.2f}x "
                f"Lucent's time (target <= 0.33); in CPU time {job_c / base_c:5.2f}x"
            )
            continue
        print(
            f"  Lucid-style fp32 loop, whole network, {threads} threads "
            f"({floor.info['threads']}): {base:6.3f} s per channel, speed-up {base / job:5.2f}x"
            f"  (target >= 3); in CPU time {base_c:.3f} s, {base_c / job_c:5.2f}x"
        )


if __name__ == "__main__":
    main()
