"""The ``cnnviz`` command: a client of the service, and the commands that start its parts.

    cnnviz maps photo.jpg -m shapes -l block1.conv -o maps.png
    cnnviz optimize -m shapes -l block3.relu -c 0-7 --wait -o patterns.png
    cnnviz dissect -m shapes -d shapes -l block4.relu --wait -o dissection/
    cnnviz serve                      # the API (service.main:app under uvicorn)
    cnnviz worker --concurrency 2     # a Celery worker on the gpu queue

An error answer is printed from its problem+json (status, code, detail) and the command
exits 1; a service that cannot be reached exits 2. No traceback either way.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cnnviz_client.client import DEFAULT_URL, ApiError, Client, JobFailed


def parse_channels(text: str) -> list[int] | str:
    """``0-7``, ``3,5,9``, ``0-3,8`` or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    channels: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            channels.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read channels {text!r}; write e.g. 0-7, 3,5,9 or all"
        ) from None
    return channels


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def cmd_models(args: argparse.Namespace) -> None:
    with _client(args) as client:
        for model in client.models().models:
            size = "×".join(map(str, model.input_size))
            print(f"{model.name:16} {size:>9} {model.error or model.description}")


def cmd_layers(args: argparse.Namespace) -> None:
    with _client(args) as client:
        for layer in client.layers(args.model).layers:
            axes = layer.axes or "ambiguous"
            print(f"{layer.name:32} {layer.kind:20} {axes:9} {layer.shape}")


def cmd_maps(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.sample is None):
        raise SystemExit("cnnviz maps: give an image file or --sample NAME (one of them)")
    options = {
        k: v
        for k, v in {
            "channels": args.channels if isinstance(args.channels, list) else None,
            "top_k": args.top_k,
            "colormap": args.colormap,
            "scale": args.scale,
        }.items()
        if v is not None
    }
    with _client(args) as client:
        answer = client.feature_maps(
            args.model, args.layer, image=args.image, sample=args.sample, **options
        )
    out = Path(args.output)
    for layer in answer.layers:
        path = out if len(answer.layers) == 1 else out.with_stem(f"{out.stem}-{layer.name}")
        path.write_bytes(base64.b64decode(layer.image))
        grid = layer.grid
        print(
            f"{path}: {layer.name} {layer.shape}, {len(grid.channels)} channels in "
            f"{grid.rows}×{grid.columns} tiles of {grid.tile[0]}×{grid.tile[1]}"
        )


def cmd_methods(args: argparse.Namespace) -> None:
    with _client(args) as client:
        listed = client.attribution_methods(args.model)
    for method in listed.methods:
        images = method.cost.default_images
        cost = method.cost.formula + (f" = {images}" if images is not None else "")
        layer = " (needs --layer)" if method.needs_layer else ""
        print(f"{method.name:22} {cost:24} {method.summary}{layer}")


def cmd_attribute(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.sample is None):
        raise SystemExit("cnnviz attribute: give an image file or --sample NAME (one of them)")
    options = {
        k: v
        for k, v in {"layer": args.layer, "target": args.target, "colormap": args.colormap}.items()
        if v is not None
    }
    if args.metrics:
        options["metrics"] = ["deletion", "insertion"]
    with _client(args) as client:
        answer = client.attributions(
            args.model, args.method, image=args.image, sample=args.sample, **options
        )
    out = Path(args.output)
    for item in answer.attributions:
        many = len(answer.attributions) > 1
        path = out.with_stem(f"{out.stem}-{item.target.index}") if many else out
        path.write_bytes(base64.b64decode(item.overlay))
        line = f"{path}: {answer.method} for {item.target.label!r} ({item.target.index})"
        scores = item.faithfulness
        if scores is not None and scores.random is not None:
            line += (
                f"; deletion AUC {scores.deletion_auc:.3f} (random "
                f"{scores.random.deletion_auc:.3f}), insertion AUC {scores.insertion_auc:.3f} "
                f"(random {scores.random.insertion_auc:.3f})"
            )
        print(line)


def cmd_optimize(args: argparse.Namespace) -> None:
    fields = {"layer": args.layer, "channels": args.channels, "steps": args.steps}
    fields["seed"] = args.seed
    if args.image_size:
        fields["image_size"] = args.image_size
    with _client(args) as client:
        job = client.optimize(args.model, **fields)
        print(f"job {job.id} {job.status.value}: {args.url}/v1/jobs/{job.id}", file=sys.stderr)
        if not args.wait:
            print(job.id)
            return
        job = client.wait(job.id, progress=not args.quiet)
        if args.output:
            path = client.save_result(job, args.output)
            assert job.result is not None
            print(f"{path}: {len(job.result.units)} image(s) of {job.result.layer}")


def cmd_dissect(args: argparse.Namespace) -> None:
    fields: dict[str, Any] = {"dataset": args.dataset, "layers": args.layer, "k": args.k}
    for name in ("method", "quantile", "iou_threshold"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    with _client(args) as client:
        job = client.dissect(args.model, **fields)
        print(f"job {job.id} {job.status.value}: {args.url}/v1/jobs/{job.id}", file=sys.stderr)
        if not args.wait:
            print(job.id)
            return
        job = client.wait(job.id, progress=not args.quiet)
        written = client.save_dissection(job, args.output, units=args.units)
        assert job.result is not None
        for layer in job.result.layers:
            print(
                f"{layer.name}: {layer.detectors} detector(s) of {len(layer.units)} units, "
                f"{layer.unique_concepts} concept(s)"
            )
        print(f"{written[0]} and {len(written) - 1} PNG(s) in {args.output}")


def cmd_wait(args: argparse.Namespace) -> None:
    with _client(args) as client:
        job = client.wait(args.job, progress=not args.quiet)
        if args.output:
            print(client.save_result(job, args.output))


def cmd_serve(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("service") is None or importlib.util.find_spec("uvicorn") is None:
        raise SystemExit(
            "cnnviz serve needs the server: install it from the repository with "
            "pip install -e './server[server]' (or run it from a checkout)"
        )
    if args.workers > 1 and not os.environ.get("CNNVIZ_REDIS_URL"):
        raise SystemExit(
            "cnnviz serve: --workers > 1 needs CNNVIZ_REDIS_URL: in-process jobs live in one "
            "process's memory, and another process would answer 404 for them"
        )
    import uvicorn

    uvicorn.run("service.main:app", host=args.host, port=args.port, workers=args.workers)


def cmd_worker(args: argparse.Namespace) -> None:
    celery = shutil.which("celery")
    if celery is None or importlib.util.find_spec("workers") is None:
        raise SystemExit(
            "cnnviz worker needs the server: pip install -e './server[server]' from the repository"
        )
    argv = [celery, "-A", "workers.app", "worker", "-Q", "gpu", "--pool", "prefork"]
    argv += ["--concurrency", str(args.concurrency), "--loglevel", args.loglevel]
    os.execv(celery, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnviz", description="What convolutional networks see")
    parser.add_argument(
        "--url", default=os.environ.get("CNNVIZ_URL", DEFAULT_URL), help="the service (CNNVIZ_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("CNNVIZ_API_KEY"), help="X-API-Key (CNNVIZ_API_KEY)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="the models of the service")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("layers", help="the layers of a model")
    p.add_argument("-m", "--model", required=True)
    p.set_defaults(run=cmd_layers)

    p = sub.add_parser("maps", help="feature-map grids of an image, as PNG files")
    p.add_argument("image", nargs="?", help="an image file (or --sample)")
    p.add_argument("--sample", help="a built-in sample image instead, e.g. triangle")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-l", "--layer", action="append", required=True, help="repeat for more")
    p.add_argument("-c", "--channels", type=parse_channels, help="e.g. 0-7; default: all")
    p.add_argument("--top-k", type=int)
    p.add_argument("--colormap")
    p.add_argument("--scale", type=int)
    p.add_argument("-o", "--output", default="maps.png", help="PNG file (one per layer)")
    p.set_defaults(run=cmd_maps)

    p = sub.add_parser("methods", help="the attribution methods of the service")
    p.add_argument("-m", "--model", help="costs in images for this model")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("attribute", help="attribution maps over an image, as PNG files")
    p.add_argument("image", nargs="?", help="an image file (or --sample)")
    p.add_argument("--sample", help="a built-in sample image instead, e.g. triangle")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--method", required=True, help="one of: cnnviz methods")
    p.add_argument("-l", "--layer", help="for the CAM methods")
    p.add_argument("-t", "--target", action="append", help="a class index or label; repeat")
    p.add_argument("--metrics", action="store_true", help="deletion and insertion scores")
    p.add_argument("--colormap")
    p.add_argument("-o", "--output", default="attribution.png", help="PNG (one per target)")
    p.set_defaults(run=cmd_attribute)

    p = sub.add_parser("optimize", help="queue an optimization job; --wait for its images")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-l", "--layer", required=True)
    p.add_argument("-c", "--channels", type=parse_channels, default="all")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int)
    p.add_argument("--wait", action="store_true", help="wait with a progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", help="with --wait: write the result grid PNG here")
    p.set_defaults(run=cmd_optimize)

    p = sub.add_parser("dissect", help="label every unit of some layers from a dataset")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-d", "--dataset", required=True, help="see GET /v1/datasets")
    p.add_argument("-l", "--layer", action="append", required=True, help="repeat for more")
    p.add_argument("--method", choices=["masks", "labels"], help="default: masks if it has some")
    p.add_argument("--quantile", type=float, help="masks: on above the 1 - quantile (0.005)")
    p.add_argument("--iou-threshold", type=float, help="masks: detector above (0.04)")
    p.add_argument("-k", type=int, default=16, help="top images per unit")
    p.add_argument("--wait", action="store_true", help="wait with a progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", default="dissection", help="with --wait: a folder")
    p.add_argument("--units", type=int, default=8, help="PNGs of the best units per layer")
    p.set_defaults(run=cmd_dissect)

    p = sub.add_parser("wait", help="wait for a job with a progress bar")
    p.add_argument("job")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-o", "--output", help="write the result grid PNG here")
    p.set_defaults(run=cmd_wait)

    p = sub.add_parser("serve", help="run the API (uvicorn service.main:app)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="> 1 only with CNNVIZ_REDIS_URL")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker on the gpu queue")
    p.add_argument("--concurrency", type=int, default=1, help="pool children: one per GPU")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(run=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ApiError as exc:
        print(f"cnnviz: error {exc.status} {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except JobFailed as exc:
        print(f"cnnviz: {exc}", file=sys.stderr)
        return 1
    except (httpx.ConnectError, httpx.TimeoutException) as exc:
        print(
            f"cnnviz: cannot reach the service at {args.url} ({exc}); start it with "
            "`cnnviz serve` or pass --url",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"cnnviz: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
