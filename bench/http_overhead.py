"""HTTP overhead of POST feature-maps: p50 through uvicorn ÷ p50 of the same work in-process.

The in-process time is the forward pass to the layer, the grid and the PNG encoding (the image
already preprocessed). The HTTP time is everything a client sees: upload, decode, preprocess,
the same work, base64 and JSON, on localhost with keep-alive. Requests alternate with
in-process runs, so both see the same machine. Target: ratio <= 1.3.

    .venv/bin/python -m bench.http_overhead [--rounds 40] [--models shapes,resnet18]
        [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

from bench.common import api_server, machine, models_file, ms, png_bytes
from cnnviz.data.shapes import sample_image
from cnnviz.featuremaps import feature_maps
from cnnviz.imaging import preprocess
from cnnviz.models import LoadedModel, ModelRegistry

CASES = [("shapes", "block1.conv", 64), ("resnet18", "layer2", 224)]


def p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(
    client: httpx.Client, loaded: LoadedModel, layer: str, size: int, rounds: int
) -> dict[str, float]:
    """p50 seconds of: in-process work, POST as multipart, POST as JSON with base64."""
    spec = loaded.spec
    image = sample_image("star").resize((size, size))
    upload = png_bytes(image)
    encoded = base64.b64encode(upload).decode()
    x = preprocess(image, size=spec.input_size, channels=3, mean=spec.mean, std=spec.std)
    url = f"/v1/models/{spec.name}/feature-maps"

    def in_process() -> bytes:
        return feature_maps(loaded.module, x, [layer])[0].png()

    def multipart() -> None:
        files = {"image": ("star.png", upload, "image/png")}
        client.post(url, files=files, data={"layers": [layer]}).raise_for_status()

    def json_base64() -> None:
        client.post(url, json={"image": encoded, "layers": [layer]}).raise_for_status()

    calls = {"in-process": in_process, "multipart": multipart, "json": json_base64}
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(3):  # warm-up: first-use loading and tracing, caches
        for call in calls.values():
            call()
    for _ in range(rounds):  # interleaved, so that all three see the same machine
        for name, call in calls.items():
            runs[name].append(timed(call))
    return {name: p50(samples) for name, samples in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--models", default="shapes,resnet18", help="comma-separated")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads here and OMP_NUM_THREADS of the server (default: torch's)",
    )
    args = parser.parse_args()
    env = {}
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        toml = models_file(Path(tmp))
        registry = ModelRegistry.from_file(toml)
        with (
            api_server({"CNNVIZ_MODELS_FILE": str(toml), **env}) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            print(
                f"{'model':9} {'layer':12} {'in-process':>11} {'multipart':>11} {'ratio':>6}"
                f" {'JSON base64':>11} {'ratio':>6}"
            )
            floor = p50([timed(lambda: client.get("/healthz")) for _ in range(200)])
            for model, layer, size in CASES:
                if model not in args.models.split(","):
                    continue
                p = measure(client, registry.get(model), layer, size, args.rounds)
                base = p["in-process"]
                print(
                    f"{model:9} {layer:12} {ms(base)} {ms(p['multipart'])} "
                    f"{p['multipart'] / base:6.2f} {ms(p['json'])} {p['json'] / base:6.2f}"
                )
            print(f"HTTP floor: GET /healthz p50 {ms(floor).strip()} (client, uvicorn, FastAPI)")


if __name__ == "__main__":
    main()
