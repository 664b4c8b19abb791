"""Peak resident memory of the API process: serving ``shapes``, and serving resnet18 too.

Each case starts a fresh server (uvicorn in a subprocess), reads its RSS once it is up, sends
requests with 8 concurrent clients, and reads the peak RSS (``VmHWM`` in ``/proc``).

    .venv/bin/python -m bench.memory [--requests 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
from pathlib import Path

import httpx

from bench.common import api_server, machine, models_file, png_bytes, rss_mib
from cnnviz.data.shapes import sample_image

CASES = {
    "shapes": [("shapes", ["block1.conv", "block3.conv"], 64)],
    "shapes + resnet18": [
        ("shapes", ["block1.conv", "block3.conv"], 64),
        ("resnet18", ["layer1", "layer2", "layer4"], 224),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="per model")
    args = parser.parse_args()
    print(machine())
    print(f"{'serving':20} {'RSS at start':>13} {'peak RSS':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CNNVIZ_MODELS_FILE": str(models_file(Path(tmp)))}
        for label, requests in CASES.items():
            with (
                api_server(env) as server,
                concurrent.futures.ThreadPoolExecutor(8) as pool,
            ):
                start, _ = rss_mib(server.pid)

                def post(model: str, layers: list[str], size: int, url: str = server.url) -> int:
                    upload = png_bytes(sample_image("star").resize((size, size)))
                    files = {"image": ("star.png", upload, "image/png")}
                    response = httpx.post(
                        f"{url}/v1/models/{model}/feature-maps",
                        files=files,
                        data={"layers": layers},
                        timeout=120,
                    )
                    return response.status_code

                futures = [
                    pool.submit(post, model, layers, size)
                    for model, layers, size in requests
                    for _ in range(args.requests)
                ]
                statuses = [future.result() for future in futures]
                _, peak = rss_mib(server.pid)
            bad = [s for s in statuses if s != 200]
            note = f"  ({len(bad)} errors: {sorted(set(bad))})" if bad else ""
            print(f"{label:20} {start:9.0f} MiB {peak:6.0f} MiB{note}")


if __name__ == "__main__":
    main()
