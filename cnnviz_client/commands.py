"""The ``cnnviz`` commands for attributions, filter weights, data sets and exemplars (the
others, and the parser they join, are in :mod:`cnnviz_client.cli`)."""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnviz_client.client import Client
from schemas.dissection import DissectionResult
from schemas.exemplars import ExemplarsResult
from schemas.jobs import JobRead


def connect(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def followed(
    client: Client, job: JobRead[Any, Any], args: argparse.Namespace
) -> JobRead[Any, Any] | None:
    """After a submit: the job's address on stderr; with ``--wait``, the job once it succeeded
    (a progress bar unless ``--quiet``), else its id on stdout and None."""
    print(f"job {job.id} {job.status.value}: {args.url}/v1/jobs/{job.id}", file=sys.stderr)
    if not args.wait:
        print(job.id)
        return None
    return client.wait(job.id, progress=not args.quiet)


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


def parse_indices(text: str) -> list[int]:
    """``0-7``, ``3,5,9``: the same as channels, without ``all``."""
    chosen = parse_channels(text)
    if isinstance(chosen, str):
        raise argparse.ArgumentTypeError("give indices, e.g. 0-7 or 3,5,9 (or leave it out)")
    return chosen


def _target(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _given(args: argparse.Namespace, names: Sequence[str], **options: Any) -> dict[str, Any]:
    """The options set on the command line, the service's defaults for the others: the
    arguments ``names`` under their own names, and ``options`` made from others."""
    chosen = {name: getattr(args, name) for name in names} | options
    return {k: v for k, v in chosen.items() if v is not None}


def cmd_datasets(args: argparse.Namespace) -> None:
    with connect(args) as client:
        for dataset in client.datasets().datasets:
            if dataset.error:
                print(f"{dataset.name:16} error: {dataset.error}")
                continue
            labels = f"{len(dataset.labels)} labels" if dataset.labels else "no labels"
            print(
                f"{dataset.name:16} {dataset.images:>7} images  {labels:10} {dataset.description}"
            )


def cmd_weights(args: argparse.Namespace) -> None:
    names = ("mode", "k", "filters", "top_k", "normalize", "colormap", "columns", "scale")
    options = _given(args, names)
    with connect(args) as client:
        answer = client.weights(args.model, args.layer, **options)
    out = Path(args.output)
    out.write_bytes(base64.b64decode(answer.image))
    grid = answer.grid
    print(
        f"{out}: {answer.layer} {answer.kind} {answer.weight_shape}, {len(grid.filters)} "
        f"filters ({answer.mode}) in {grid.rows}×{grid.columns} tiles of "
        f"{grid.tile[0]}×{grid.tile[1]}"
    )


def cmd_attribute(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.sample is None):
        raise SystemExit("cnnviz attribute: give an image file or --sample NAME (one of them)")
    target = args.target if args.target is None or len(args.target) > 1 else args.target[0]
    fields = _given(
        args,
        ("method", "layer", "steps", "baseline", "window", "stride", "colormap", "opacity"),
        target=target,
        metrics=["deletion", "insertion"] if args.metrics else None,
    )
    with connect(args) as client:
        answer = client.attribute(args.model, image=args.image, sample=args.sample, **fields)
    for p in answer.predictions:
        chance = "" if p.probability is None else f"  p={p.probability:.3f}"
        print(f"{p.label:16} #{p.index:<4} score={p.score:.3f}{chance}")
    out = Path(args.output)
    for item in answer.attributions:
        label = item.target.label
        path = out if len(answer.attributions) == 1 else out.with_stem(f"{out.stem}-{label}")
        path.write_bytes(base64.b64decode(item.map if args.picture == "map" else item.overlay))
        y, x = item.stats.peak
        line = f"{path}: {answer.method} for {label}, peak at y={y} x={x}"
        scores = item.faithfulness
        if scores is not None and scores.random is not None:
            line += (
                f"; deletion AUC {scores.deletion_auc:.3f} (random "
                f"{scores.random.deletion_auc:.3f}), insertion AUC {scores.insertion_auc:.3f} "
                f"(random {scores.random.insertion_auc:.3f})"
            )
        print(line)


def cmd_jobs(args: argparse.Namespace) -> None:
    with connect(args) as client:
        page = client.jobs(args.kind, args.model, args.status, args.limit)
    for job in page.jobs:
        progress = f"{job.progress.step}/{job.progress.total}" if job.progress else ""
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{job.id}  {job.kind:12} {job.model:12} {job.status.value:9} {progress:>11}  {created}"
        )
    if page.next_page_token:
        print(f"(more: --limit {args.limit * 2}, or the API's page_token)", file=sys.stderr)


def cmd_methods(args: argparse.Namespace) -> None:
    with connect(args) as client:
        listed = client.attribution_methods(args.model)
    for method in listed.methods:
        images = method.cost.default_images
        cost = method.cost.formula + (f" = {images}" if images is not None else "")
        layer = " (needs --layer)" if method.needs_layer else ""
        sanity = f" [sanity: {method.sanity}]" if listed.model else ""
        print(f"{method.name:22} {cost:24} {method.summary}{layer}{sanity}")


def _encoder(value: str) -> dict[str, str]:
    """``MODEL:LAYER`` as the request's ``mis_encoder``."""
    model, _, layer = value.partition(":")
    if not model or not layer:
        raise SystemExit(f"--mis-encoder takes MODEL:LAYER, e.g. shapes:flatten; got {value!r}")
    return {"model": model, "layer": layer}


def cmd_dissect(args: argparse.Namespace) -> None:
    fields = _given(
        args,
        ("dataset", "k", "method", "quantile", "iou_threshold"),
        layers=args.layer,
        mis=True if args.mis or args.mis_encoder else None,
        mis_encoder=_encoder(args.mis_encoder) if args.mis_encoder else None,
    )
    with connect(args) as client:
        done = followed(client, client.dissect(args.model, **fields), args)
        if done is None:
            return
        written = client.save_dissection(done, args.output, units=args.units)
    result = DissectionResult.model_validate(done.result)
    for layer in result.layers:
        print(
            f"{layer.name}: {layer.detectors} detector(s) of {len(layer.units)} units, "
            f"{layer.unique_concepts} concept(s)"
        )
    print(f"{written[0]} and {len(written) - 1} PNG(s) in {args.output}")


def cmd_exemplars(args: argparse.Namespace) -> None:
    fields = _given(args, ("dataset", "k", "pool"), layers=args.layer)
    if args.bottom:
        fields["bottom"] = True
    if args.output and args.channel is None:
        raise SystemExit("cnnviz exemplars: -o needs --channel (whose images to draw)")
    with connect(args) as client:
        done = followed(client, client.exemplars(args.model, **fields), args)
        if done is None:
            return
        result = done.result
        assert isinstance(result, ExemplarsResult), done.kind
        print(
            f"{result.images} images of {result.dataset} ranked for "
            f"{sum(len(layer.units) for layer in result.layers)} channels of "
            f"{', '.join(layer.name for layer in result.layers)}"
        )
        if args.output:
            grid = client.exemplar_grid(
                done.id, args.layer[0], args.channel, mode=args.mode, which=args.which
            )
            Path(args.output).write_bytes(base64.b64decode(grid.png))
            ranked = zip(grid.images, grid.scores, strict=True)
            best = ", ".join(f"{image} ({score:.3g})" for image, score in ranked)
            print(
                f"{args.output}: {grid.which} {len(grid.images)} of channel {grid.channel}: {best}"
            )


def add_commands(sub: Any) -> None:
    """Add these commands to the ``cnnviz`` parser's subcommands."""
    p = sub.add_parser("datasets", help="the data sets of the service")
    p.set_defaults(run=cmd_datasets)

    p = sub.add_parser("weights", help="the filters of a convolution, as a PNG grid")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-l", "--layer", required=True, help="a convolution module's name")
    p.add_argument("--mode", choices=["auto", "rgb", "slices", "norm"])
    p.add_argument("-k", type=int, help="slices per filter (mode slices)")
    p.add_argument("-f", "--filters", type=parse_indices, help="e.g. 0-7; default: all")
    p.add_argument("--top-k", type=int, help="the k filters of largest norm")
    p.add_argument("--normalize", choices=["filter", "layer"])
    p.add_argument("--colormap")
    p.add_argument("--columns", type=int)
    p.add_argument("--scale", type=int)
    p.add_argument("-o", "--output", default="weights.png")
    p.set_defaults(run=cmd_weights)

    p = sub.add_parser("attribute", help="which pixels made the prediction, as PNGs")
    p.add_argument("image", nargs="?", help="an image file (or --sample)")
    p.add_argument("--sample", help="a built-in sample image instead, e.g. star")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--method", required=True, help="e.g. gradcam, saliency, occlusion")
    p.add_argument("-l", "--layer", help="for Grad-CAM: the layer it weighs")
    p.add_argument(
        "-t", "--target", type=_target, action="append", help="class index or label; repeat"
    )
    p.add_argument("--steps", type=int, help="integrated gradients' steps")
    p.add_argument("--baseline", choices=["black", "white", "mean"])
    p.add_argument("--window", type=int, help="occlusion's patch side")
    p.add_argument("--stride", type=int, help="occlusion's step")
    p.add_argument("--colormap")
    p.add_argument("--opacity", type=float)
    p.add_argument("--picture", choices=["overlay", "map"], default="overlay")
    p.add_argument("--metrics", action="store_true", help="deletion and insertion scores")
    p.add_argument("-o", "--output", default="attribution.png", help="PNG (one per target)")
    p.set_defaults(run=cmd_attribute)

    p = sub.add_parser("exemplars", help="queue an exemplar job; --wait for its images")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-l", "--layer", action="append", required=True, help="repeat for more")
    p.add_argument("-k", type=int, help="images kept per channel")
    p.add_argument("--pool", choices=["mean", "max"])
    p.add_argument("--bottom", action="store_true", help="also the k lowest")
    p.add_argument("--wait", action="store_true", help="wait with a progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--channel", type=int, help="with -o: the channel of the first layer")
    p.add_argument("--mode", choices=["full", "crop", "mask"], default="full")
    p.add_argument("--which", choices=["top", "bottom"], default="top")
    p.add_argument("-o", "--output", help="with --wait and --channel: its grid PNG")
    p.set_defaults(run=cmd_exemplars)

    p = sub.add_parser("methods", help="the attribution methods of the service")
    p.add_argument("-m", "--model", help="costs in images for this model")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("dissect", help="label every unit of some layers from a dataset")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-d", "--dataset", required=True, help="see GET /v1/datasets")
    p.add_argument("-l", "--layer", action="append", required=True, help="repeat for more")
    p.add_argument("--method", choices=["masks", "labels"], help="default: masks if it has some")
    p.add_argument("--quantile", type=float, help="masks: on above the 1 - quantile (0.005)")
    p.add_argument("--iou-threshold", type=float, help="masks: detector above (0.04)")
    p.add_argument("-k", type=int, default=16, help="top images per unit")
    p.add_argument("--mis", action="store_true", help="also each unit's interpretability score")
    p.add_argument("--mis-encoder", help="MODEL:LAYER for --mis (default: the model's penultimate)")
    p.add_argument("--wait", action="store_true", help="wait with a progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", default="dissection", help="with --wait: a folder")
    p.add_argument("--units", type=int, default=8, help="PNGs of the best units per layer")
    p.set_defaults(run=cmd_dissect)

    p = sub.add_parser("jobs", help="your recent jobs, newest first")
    p.add_argument("--kind", help="only this kind (optimization, exemplar, dissection, ...)")
    p.add_argument("-m", "--model", help="only this model")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("-n", "--limit", type=int, default=20, help="at most this many (1-100)")
    p.set_defaults(run=cmd_jobs)
