"""Feature maps through the running service: one client against an independent floor, and
8 clients against the code before the performance work, measured side by side in one run.

1. One client: p50 of ``POST /v1/models/resnet18/feature-maps`` (multipart PNG upload,
   ``layers=layer2``, default settings, resnet18 with random weights at 224 px) over uvicorn
   ÷ p50 of the independent floor in this process, with torch's default threads: torchvision's
   ``create_feature_extractor`` to ``layer2`` on the preprocessed image, each channel
   normalized to [0, 1], ``torchvision.utils.make_grid``, a Pillow PNG (compression level 1,
   the service's). Requests and floor runs alternate. Target <= 1.2.
2. 8 clients, each with its own keep-alive connection, for ``--seconds`` a burst: requests/s of
   today's service ÷ the service at ``--before`` (a git worktree of the commit before the
   performance work; ``git worktree add --detach /tmp/before 61a2dc6``), both servers running,
   bursts alternating between them, medians of ``--bursts``. Two cases: ``shapes`` with two
   layers (64 px, ``bench.throughput``'s case) and resnet18 ``layer2`` at 224 px. Target >= 1.
   With each, the CPU seconds (all threads) each server process spent per answered request
   over its bursts: on cores shared with other work, wall time measures the load as much as
   the work, CPU time far less; with the cores saturated, requests/s is about the cores
   available ÷ CPU seconds per request.

    .venv/bin/python -m bench.feature_maps [--before /tmp/before] [--rounds 40]
        [--bursts 3] [--seconds 5] [--device cpu|cuda] [--only one|clients]
        [--cases shapes,resnet18]
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import torch
import torchvision
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms.functional import normalize, pil_to_tensor

from bench.common import Server, api_server, cpu_seconds, machine, models_file, ms, png_bytes
from cnnviz.data.shapes import sample_image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Floor:
    """The independent computation: torchvision alone, no cnnviz code."""

    def __init__(self, image: Image.Image, device: torch.device) -> None:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval().to(device)
        self.extractor = create_feature_extractor(model, ["layer2"])
        x = pil_to_tensor(image.convert("RGB").resize((224, 224))).float().div(255)
        self.x = normalize(x, list(MEAN), list(STD))[None].to(device)

    @torch.inference_mode()
    def __call__(self) -> bytes:
        act = self.extractor(self.x)["layer2"][0]  # (C, H, W)
        low = act.amin(dim=(1, 2), keepdim=True)
        high = act.amax(dim=(1, 2), keepdim=True)
        tiles = ((act - low) / (high - low).clamp_min(1e-12))[:, None]  # (C, 1, H, W)
        grid = torchvision.utils.make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=1)
        pixels = grid.mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def one_client(url: str, floor: Floor, upload: bytes, rounds: int) -> tuple[float, float]:
    """p50 seconds of a POST over HTTP and of the floor, alternating."""
    files = {"image": ("star.png", upload, "image/png")}
    path = "/v1/models/resnet18/feature-maps"
    with httpx.Client(base_url=url, timeout=60) as client:

        def post() -> None:
            client.post(path, files=files, data={"layers": ["layer2"]}).raise_for_status()

        for _ in range(3):  # warm-up: loading, tracing, kernels
            post(), floor()
        pairs = [(timed(post), timed(floor)) for _ in range(rounds)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


CASES = {
    "shapes": ("/v1/models/shapes/feature-maps", {"layers": ["block1.conv", "block3.conv"]}, 64),
    "resnet18": ("/v1/models/resnet18/feature-maps", {"layers": ["layer2"]}, 224),
}


def burst(url: str, case: str, clients: int, seconds: float) -> tuple[float, int, int]:
    """Requests per second of ``clients`` threads for ``seconds``, the 200 count and the
    non-200 count."""
    path, fields, size = CASES[case]
    files = {"image": ("triangle.png", png_bytes(sample_image("triangle").resize((size,) * 2)))}
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < stop_at:
                try:
                    status = client.post(path, files=files, data=fields).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return statuses[200] / elapsed, statuses[200], sum(n for s, n in statuses.items() if s != 200)


def clients_case(
    now: Server, old: Server, before: Path, case: str, clients: int, bursts: int, seconds: float
) -> None:
    """Alternating bursts of ``clients`` against both servers; requests/s and CPU per request."""
    for server in (now, old):  # warm-up
        burst(server.url, case, clients, 1.0)
    servers = {"today": now, "before": old}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    answered = dict.fromkeys(servers, 0)
    errors = dict.fromkeys(servers, 0)
    cpu = dict.fromkeys(servers, 0.0)
    for _ in range(bursts):  # alternate, so both see the same load
        for name, server in servers.items():
            cpu_start = cpu_seconds(server.pid)
            rate, ok, bad = burst(server.url, case, clients, seconds)
            cpu[name] += cpu_seconds(server.pid) - cpu_start
            rates[name].append(rate)
            answered[name] += ok
            errors[name] += bad
    r_now, r_old = statistics.median(rates["today"]), statistics.median(rates["before"])
    print(
        f"{clients} clients, {case} {CASES[case][1]['layers']}, "
        f"median of {bursts} bursts of {seconds:g} s:"
    )
    per_request = {name: cpu[name] / max(1, answered[name]) for name in servers}
    for name in servers:
        where = f", {before}" if name == "before" else ""
        print(
            f"  {name:<6} {r_now if name == 'today' else r_old:7.1f} req/s  "
            f"{per_request[name] * 1000:6.2f} CPU ms a request  "
            f"({errors[name]} errors{where})"
        )
    cpu_ratio = per_request["today"] / per_request["before"]
    print(
        f"  ratio {r_now / r_old:5.2f}  (target >= 1);  CPU a request, today ÷ before "
        f"{cpu_ratio:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="/tmp/before", help="worktree of the old code")
    parser.add_argument("--rounds", type=int, default=40, help="one-client pairs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bursts", type=int, default=3, help="8-client bursts per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a burst")
    parser.add_argument("--device", default="cpu", help="CNNVIZ_DEVICE and the floor's")
    parser.add_argument(
        "--only", choices=("one", "clients"), default=None, help="run only this part"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="the 8-client cases, comma-separated"
    )
    args = parser.parse_args()
    cases = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    device = torch.device(args.device)
    print(machine())
    before = Path(args.before).resolve()
    upload_image = sample_image("star").resize((224, 224))
    with tempfile.TemporaryDirectory() as tmp:
        toml = models_file(Path(tmp))
        env = {"CNNVIZ_MODELS_FILE": str(toml), "CNNVIZ_DEVICE": args.device}
        old_env = {**env, "PYTHONPATH": str(before)}
        with ExitStack() as stack:
            now = stack.enter_context(api_server(env))
            old = None  # the older service only for the 8-client part: no --before for one
            if args.only != "one":
                old = stack.enter_context(api_server(old_env, root=before))
            if args.only != "clients":
                floor = Floor(upload_image, device)
                http, base = one_client(now.url, floor, png_bytes(upload_image), args.rounds)
                print(f"1 client, resnet18 layer2 at 224 px, p50 of {args.rounds} pairs:")
                print(f"  POST feature-maps over HTTP {ms(http)}")
                threads = torch.get_num_threads()
                print(f"  independent floor           {ms(base)}  (torch threads {threads})")
                print(f"  ratio {http / base:5.2f}  (target <= 1.2)")
            if old is not None:
                for case in cases:
                    clients_case(now, old, before, case, args.clients, args.bursts, args.seconds)


if __name__ == "__main__":
    main()
