"""Shared pieces of the benchmarks: a real API server in a subprocess, images, percentiles.

Benchmarks are scripts run by hand from the repository root (``python -m bench.grid``); they
print figures measured side by side in one run, because one absolute time on a shared machine
means little.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

from cnnviz.precision import cpu_flags, cpu_vendor, resolve_precision

ROOT = Path(__file__).resolve().parents[1]

# resnet18 with random weights, at ImageNet's input size: for benchmarks only.
RESNET18_TOML = """
[models.resnet18]
arch = "resnet18"
weights = "random"
input_size = [224, 224]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""


def machine() -> str:
    """One line about where the figures come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    bf16 = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"}) or ["no native bf16"]
    auto = resolve_precision("auto", "cpu").precision
    return (
        f"{cpu} ({cpu_vendor() or 'unknown vendor'}; {', '.join(bf16)}; auto on CPU: {auto}), "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def models_file(directory: Path) -> Path:
    path = directory / "models.toml"
    path.write_text(RESNET18_TOML, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def api_server(
    env: Mapping[str, str] | None = None,
    uvicorn_args: Sequence[str] = (),
    root: Path = ROOT,
) -> Iterator[Server]:
    """``uvicorn service.main:app`` in a subprocess on a free 127.0.0.1 port, until the block
    ends. ``env`` adds ``CNNVIZ_*`` settings (or ``OMP_NUM_THREADS``) to this environment;
    ``root`` is the checkout it runs from (another commit's worktree: set ``PYTHONPATH`` to it
    in ``env`` too)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *uvicorn_args,
    ]
    # A data directory of its own (the default is the user's): no job of an earlier run is
    # resumed, none of this one is kept.
    scratch = tempfile.TemporaryDirectory(prefix="cnnviz-bench-")
    env = {"CNNVIZ_DATA_DIR": scratch.name, **(env or {})}
    process = subprocess.Popen(command, cwd=root, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 120 s")
            time.sleep(0.1)
        yield Server(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        scratch.cleanup()


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on: state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def usage(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds (all threads) and minor page faults of process ``pid``."""
    fields = _stat(pid)
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU time (user + system, all threads) process ``pid`` has used so far (Linux ``/proc``);
    with ``children``, that of its children that ended too (a shard's DataLoader processes).

    On cores shared with other work, wall time measures the load as much as the work; CPU
    time does not (except for OpenMP threads spinning while they wait for a busy core)."""
    ticks = sum(int(v) for v in _stat(pid)[11 : 15 if children else 13])  # utime, stime, cu, cs
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """``(current, peak)`` resident set size of process ``pid`` in MiB (Linux ``/proc``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``values``, linearly interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def p50(values: Sequence[float]) -> float:
    """The median as the benches report it: the upper middle value, one of the samples."""
    return sorted(values)[len(values) // 2]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def run_job(
    client: httpx.Client,
    path: str,
    body: Mapping[str, object],
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    poll_s: float = 0.1,
    near_poll_s: float = 0.01,
    deadline: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """POST a job to ``path`` and poll it as a patient client does (every ``poll_s`` while
    under 90% done, then every ``near_poll_s``): the seconds from the POST to the GET that
    saw it succeed, and that record. RuntimeError if it failed or was cancelled;
    TimeoutError past ``deadline`` (``time.monotonic()``)."""
    started = time.perf_counter()
    response = client.post(path, json=dict(body), headers=dict(headers or {}))
    response.raise_for_status()
    job_id = response.json()["id"]
    while deadline is None or time.monotonic() < deadline:
        polled = client.get(f"/v1/jobs/{job_id}", params=dict(params or {}))
        polled.raise_for_status()
        record: dict[str, Any] = polled.json()
        if record["status"] == "succeeded":
            return time.perf_counter() - started, record
        if record["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {record['status']}: {record.get('error')}")
        progress = record.get("progress") or {"step": 0, "total": 1}
        time.sleep(poll_s if progress["step"] < 0.9 * progress["total"] else near_poll_s)
    raise TimeoutError(f"job {job_id} did not finish in time")
