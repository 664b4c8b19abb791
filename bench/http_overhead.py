"""HTTP overhead of POST feature-maps: p50 through uvicorn ÷ p50 of the same work in-process.

The in-process time is the forward pass to the layer, the grid and the PNG encoding (the image
already preprocessed). The HTTP time is everything a client sees: upload, decode, preprocess,
the same work, base64 and JSON, on localhost with keep-alive. Requests alternate with
in-process runs, so both see the same machine. Target: ratio <= 1.3.

A second line per model breaks the multipart time down (reporting only; the ratios above do not
use it): "service work" is all that the server runs in its torch pool (decode, preprocess, the
same forward, grid and PNG, base64 and JSON); "ASGI app" is the same multipart POST through the
app in this process (no socket, no uvicorn); the rest of the multipart time is the client,
loopback TCP and uvicorn.

    .venv/bin/python -m bench.http_overhead [--rounds 40] [--models shapes,resnet18]
        [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import torch
from starlette.types import ASGIApp, Message

from bench.common import api_server, machine, models_file, ms, p50, png_bytes
from cnnviz.data.shapes import sample_image
from cnnviz.featuremaps import feature_maps
from cnnviz.models import LoadedModel, ModelRegistry
from schemas.feature_maps import FeatureMapsOptions
from service.concurrency import TorchPool
from service.feature_maps import FeatureMapsRequest, render_json

CASES = [("shapes", "block1.conv", 64), ("resnet18", "layer2", 224)]


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


async def timed_async(call: Callable[[], object]) -> float:
    """:func:`timed`, awaiting what ``call`` returns when it is awaitable."""
    start = time.perf_counter()
    result = call()
    if inspect.isawaitable(result):
        await result
    return time.perf_counter() - start


def asgi_app(toml: Path) -> ASGIApp:
    """The API app built in this process, with the server's models and this torch setting."""
    threads = torch.get_num_threads()
    from service.main import create_app  # builds a default app at import: its torch threads
    from service.settings import Settings

    app = create_app(Settings(models_file=toml, torch_threads=threads))
    torch.set_num_threads(threads)
    return app


async def asgi_post(app: ASGIApp, path: str, content_type: str, body: bytes) -> None:
    """One POST straight into ``app``: what uvicorn would hand it, without socket or parsing."""
    headers = [
        (b"host", b"asgi"),
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"the app answered {status}")


def measure(
    client: httpx.Client,
    app: ASGIApp,
    registry: ModelRegistry,
    loaded: LoadedModel,
    layer: str,
    size: int,
    rounds: int,
) -> dict[str, float]:
    """p50 seconds of: in-process work, POST as multipart, POST as JSON with base64; and for the
    breakdown, the server's pool work and the multipart POST through the app over ASGI."""
    spec = loaded.spec
    image = sample_image("star").resize((size, size))
    upload = png_bytes(image)
    encoded = base64.b64encode(upload).decode()
    x = spec.preprocess(image)
    url = f"/v1/models/{spec.name}/feature-maps"

    def in_process() -> bytes:
        return feature_maps(loaded.module, x, [layer])[0].png()

    def multipart() -> None:
        files = {"image": ("star.png", upload, "image/png")}
        client.post(url, files=files, data={"layers": [layer]}).raise_for_status()

    def json_base64() -> None:
        client.post(url, json={"image": encoded, "layers": [layer]}).raise_for_status()

    request = FeatureMapsRequest(FeatureMapsOptions(layers=[layer]), image_bytes=upload)

    pool = TorchPool(1, 0)

    def service_work() -> bytes:
        with pool.cores.claim():
            return render_json(registry, spec.name, request, 40_000_000, pool)

    form = httpx.Request(
        "POST", url, files={"image": ("star.png", upload, "image/png")}, data={"layers": [layer]}
    )
    form_body = form.read()

    def asgi_multipart() -> Awaitable[None]:
        return asgi_post(app, url, form.headers["content-type"], form_body)

    calls: dict[str, Callable[[], object]] = {
        "in-process": in_process,
        "multipart": multipart,
        "json": json_base64,
        "service work": service_work,
        "ASGI app": asgi_multipart,
    }

    async def interleaved() -> dict[str, list[float]]:
        # One event loop for the whole run, as in a server: the app's worker threads live on.
        runs: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(3):  # warm-up: first-use loading and tracing, caches
            for call in calls.values():
                await timed_async(call)
        for _ in range(rounds):  # interleaved, so that all see the same machine
            for name, call in calls.items():
                runs[name].append(await timed_async(call))
        return runs

    return {name: p50(samples) for name, samples in asyncio.run(interleaved()).items()}


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
            app = asgi_app(toml)
            print(
                f"{'model':9} {'layer':12} {'in-process':>11} {'multipart':>11} {'ratio':>6}"
                f" {'JSON base64':>11} {'ratio':>6}"
            )
            floor = p50([timed(lambda: client.get("/healthz")) for _ in range(200)])
            for model, layer, size in CASES:
                if model not in args.models.split(","):
                    continue
                p = measure(client, app, registry, registry.get(model), layer, size, args.rounds)
                base = p["in-process"]
                print(
                    f"{model:9} {layer:12} {ms(base)} {ms(p['multipart'])} "
                    f"{p['multipart'] / base:6.2f} {ms(p['json'])} {p['json'] / base:6.2f}"
                )
                print(
                    f"{'':9} multipart: service work {ms(p['service work']).strip()}, "
                    f"ASGI app {ms(p['ASGI app']).strip()}, client + TCP + uvicorn "
                    f"{ms(p['multipart'] - p['ASGI app']).strip()}"
                )
            print(f"HTTP floor: GET /healthz p50 {ms(floor).strip()} (client, uvicorn, FastAPI)")


if __name__ == "__main__":
    main()
