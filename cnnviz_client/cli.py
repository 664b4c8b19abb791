"""The ``cnnviz`` command: a client of the service, and the commands that start its parts.

    cnnviz maps photo.jpg -m shapes -l block1.conv -o maps.png
    cnnviz optimize -m shapes -l block3.relu -c 0-7 --wait -o patterns.png
    cnnviz attribute --sample star -m shapes --method gradcam -l block4.relu -o why.png
    cnnviz weights -m shapes -l block1.conv -o kernels.png
    cnnviz datasets
    cnnviz exemplars -m shapes -d shapes -l block3.relu --wait --channel 5 -o top.png
    cnnviz serve                      # the API (service.main:app under uvicorn)
    cnnviz worker --concurrency 2     # a Celery worker on the gpu queue

An error answer is printed from its problem+json (status, code, detail) and the command
exits 1; a service that cannot be reached exits 2. No traceback either way. ``serve`` and
``worker`` need the server installed (the ``cnnviz-service`` distribution); where it is not,
they say so and exit 1.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydantic import ValidationError

from cnnviz_client.client import DEFAULT_URL
from cnnviz_client.commands import add_commands, connect, followed, parse_channels
from cnnviz_client.errors import ApiError, JobFailed
from schemas.optimization import VsDataset

SERVER_MISSING = (
    "cnnviz {command} needs the server, which is not installed here (this is the client "
    "alone): from the repository, pip install -e . -e ./client -e './server[server]'"
)


def cmd_models(args: argparse.Namespace) -> None:
    with connect(args) as client:
        for model in client.models().models:
            size = "×".join(map(str, model.input_size))
            print(f"{model.name:16} {size:>9} {model.error or model.description}")


def cmd_layers(args: argparse.Namespace) -> None:
    with connect(args) as client:
        for layer in client.layers(args.model).layers:
            print(f"{layer.name:32} {layer.kind:20} {layer.shape}")


def cmd_maps(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.sample is None):
        raise SystemExit("cnnviz maps: give an image file or --sample NAME (one of them)")
    with connect(args) as client:  # options not given (None) are the service's defaults
        answer = client.feature_maps(
            args.model,
            args.layer,
            image=args.image,
            sample=args.sample,
            channels=args.channels if isinstance(args.channels, list) else None,
            top_k=args.top_k,
            colormap=args.colormap,
            scale=args.scale,
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


def cmd_optimize(args: argparse.Namespace) -> None:
    fields = {"layer": args.layer, "channels": args.channels, "steps": args.steps}
    fields["seed"] = args.seed
    if args.image_size:
        fields["image_size"] = args.image_size
    if args.exemplars_job:
        fields["exemplars_job"] = args.exemplars_job
    with connect(args) as client:
        job = followed(client, client.optimize(args.model, **fields), args)
        if job is None:
            return
        if args.output:
            path = client.save_result(job, args.output)
            assert job.result is not None
            print(f"{path}: {len(job.result.units)} image(s) of {job.result.layer}")
        assert job.result is not None
        for unit in job.result.units:
            if unit.vs_dataset is not None:
                print(versus_line(unit.channel, unit.vs_dataset))


def versus_line(channel: int | None, seen: VsDataset) -> str:
    """One pattern against the data set, as a person reads it."""
    rank = f"rank {seen.rank}" if seen.rank is not None else f"rank > {seen.top_k}"
    ratio = f"{seen.ratio:.2f}× the top image" if seen.ratio is not None else "top score <= 0"
    weaker = "  (weaker than real data)" if seen.activation < seen.top_score else ""
    return (
        f"channel {channel}: activation {seen.activation:.3g}, {ratio}, {rank} of "
        f"{seen.images} images of {seen.dataset}{weaker}"
    )


def cmd_wait(args: argparse.Namespace) -> None:
    with connect(args) as client:
        job = client.wait(args.job, progress=not args.quiet)
        if args.output:
            print(client.save_result(job, args.output))


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def cmd_serve(args: argparse.Namespace) -> None:
    if not _installed("service", "uvicorn"):
        raise SystemExit(SERVER_MISSING.format(command="serve"))
    if args.workers > 1 and not os.environ.get("CNNVIZ_REDIS_URL"):
        raise SystemExit(
            "cnnviz serve: --workers > 1 needs CNNVIZ_REDIS_URL: in-process jobs live in one "
            "process's memory, and another process would answer 404 for them"
        )
    # The server's own command in this interpreter: the client imports nothing of the server.
    argv = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", args.host]
    argv += ["--port", str(args.port), "--workers", str(args.workers)]
    os.execv(sys.executable, argv)


def cmd_worker(args: argparse.Namespace) -> None:
    if not _installed("workers", "celery"):
        raise SystemExit(SERVER_MISSING.format(command="worker"))
    # This interpreter's Celery, whether or not its scripts' folder is on PATH.
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "gpu"]
    argv += ["--pool", "prefork", "--concurrency", str(args.concurrency)]
    argv += ["--loglevel", args.loglevel]
    os.execv(sys.executable, argv)


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

    p = sub.add_parser("optimize", help="queue an optimization job; --wait for its images")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-l", "--layer", required=True)
    p.add_argument("-c", "--channels", type=parse_channels, default="all")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int)
    p.add_argument(
        "--exemplars-job",
        help="an exemplars or dissection job of the same layer: each pattern's activation "
        "next to the data set's (ratio to the top image, rank)",
    )
    p.add_argument("--wait", action="store_true", help="wait with a progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", help="with --wait: write the result grid PNG here")
    p.set_defaults(run=cmd_optimize)

    p = sub.add_parser("wait", help="wait for a job with a progress bar")
    p.add_argument("job")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-o", "--output", help="write the result grid PNG here")
    p.set_defaults(run=cmd_wait)

    add_commands(sub)

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
    except ValidationError as exc:  # refused here, before it was sent
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        print(f"cnnviz: invalid request: {problems}", file=sys.stderr)
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
