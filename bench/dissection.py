"""Benchmark: a dissection against the exemplar pass alone, and its peak memory, in one run.

1. Time of a ``dissection`` job (``masks``: two passes, see docs/dissection.md) ÷ time of an
   ``exemplar`` job on the same images, layers, batch size and device, both run through the
   job runner as the in-process transport runs them. The two are interleaved, repeat by
   repeat, and the medians compared: drift on a shared machine hits both alike. Target:
   ≤ 2.2× (two passes). The ``labels`` method (one pass) is measured too: target ≤ 1.3×.
2. Peak memory (the process's resident size, sampled while the job runs, above what it
   held before the job) of a fresh process
   dissecting N images and of another dissecting 4N: it should stay flat. The images and
   their masks are PNG files on disk (the ``shapes`` generator), so that the data set's own
   pixels are not held in memory and only the job's memory is measured.

    python -m bench.dissection                                 # 512 images, block3.relu
    python -m bench.dissection --images 2048 --layer block4.relu --repeats 5
    python -m bench.dissection --model r18 --models-file m.toml --layer layer4

``--model`` other than ``shapes`` needs ``--models-file`` (a ``[models.NAME]`` table); the
shapes images are resized to its input size, and their masks with them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from cnnviz.data.datasets import DatasetRegistry
from cnnviz.data.shapes import CLASSES, generate_with_masks
from cnnviz.models import ModelRegistry
from schemas.jobs import JobStatus
from tests.jobs.dissect_helpers import queued
from workers.kinds import Resources
from workers.run import execute


def write_dataset(root: Path, n: int, seed: int = 11) -> Path:
    """``n`` shapes images and their masks as PNGs, and a models file naming them ``bench``."""
    images, labels, coverage = generate_with_masks(n, seed)
    for i in range(n):
        name = CLASSES[int(labels[i])]
        for folder in (root / "images" / name, root / "masks" / name):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(
            root / "images" / name / f"{i:05d}.png"
        )
        mask = np.where(coverage[i].numpy() >= 0.5, int(labels[i]) + 1, 0).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / name / f"{i:05d}.png")
    models = root / "models.toml"
    concepts = ", ".join(f'"{c}"' for c in CLASSES)
    models.write_text(
        f'[datasets.bench]\npath = "{root / "images"}"\nmasks = "{root / "masks"}"\n'
        f"concepts = [{concepts}]\n"
    )
    return models


def run(kind_name: str, body: dict[str, Any], model: str, resources: Resources) -> float:
    """Seconds from start to result of one job through the runner, records in memory."""
    task, records = queued(kind_name, resources, model, body, ttl=3600)
    started = time.perf_counter()
    status = execute(task, resources, records)
    elapsed = time.perf_counter() - started
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"{kind_name} job {status}: {records.get('job').error}")
    return elapsed


def resources_for(models_file: Path, args: argparse.Namespace) -> Resources:
    models = ModelRegistry.from_file(args.models_file or None, device=args.device)
    return Resources(
        models=models,
        datasets=DatasetRegistry.from_file(models_file),
        batch_size=args.batch_size,
        shard_images=args.shard_images,
    )


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> None:
    """One job in a fresh process: its peak resident memory above the process's before it.

    The high-water mark (VmHWM) of the start-up (imports, tracing the model) is above what
    a small job adds, so the resident size is sampled every 2 ms while the job runs."""
    resources = resources_for(Path(args.child), args)
    resources.model(args.model)  # loaded before the baseline: both sides pay it alike
    resources.datasets.get("bench")
    before = _rss_mib()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    body = {"dataset": "bench", "layers": [args.layer], "k": args.k}
    if args.kind == "dissection":
        body["method"] = "masks"
    run(args.kind, body, args.model, resources)
    done.set()
    sampler.join()
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_mib": max(peak, _rss_mib()), "hwm_mib": hwm}))


def peak_memory(models_file: Path, kind: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.dissection", "--child", str(models_file)]
    command += ["--kind", kind, "--model", args.model, "--layer", args.layer]
    command += ["--batch-size", str(args.batch_size), "--device", args.device, "-k", str(args.k)]
    command += ["--shard-images", str(args.shard_images)]
    if args.models_file:
        command += ["--models-file", args.models_file]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--models-file", default="")
    parser.add_argument("--layer", default="block3.relu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="dissection", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"machine: {machine()}; model {args.model}, layer {args.layer}, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        small = write_dataset(Path(tmp) / "small", args.images)
        large = write_dataset(Path(tmp) / "large", 4 * args.images)
        resources = resources_for(small, args)
        common = {"dataset": "bench", "layers": [args.layer], "k": args.k}
        run("exemplar", common, args.model, resources)  # warm: model, listing, caches
        times: dict[str, list[float]] = {"exemplars": [], "masks": [], "labels": []}
        for _ in range(args.repeats):
            times["exemplars"].append(run("exemplar", common, args.model, resources))
            times["masks"].append(
                run("dissection", {**common, "method": "masks"}, args.model, resources)
            )
            times["labels"].append(
                run("dissection", {**common, "method": "labels"}, args.model, resources)
            )
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"\n1. {args.images} images, medians of {args.repeats} interleaved runs")
        print(f"   exemplar pass alone        {median['exemplars']:8.2f} s")
        for method, target in (("masks", 2.2), ("labels", 1.3)):
            ratio = median[method] / median["exemplars"]
            print(
                f"   dissection {method:<7}        {median[method]:8.2f} s  "
                f"{ratio:5.2f}× the exemplar pass (target ≤ {target}×)"
            )
            print(f"     images/s: {args.images / median[method]:.1f}")

        print("\n2. peak memory of a fresh process, above its baseline (model loaded)")
        rows = []
        for name, path, n in (("N", small, args.images), ("4N", large, 4 * args.images)):
            for kind in ("exemplar", "dissection"):
                memory = peak_memory(path, kind, args)
                rows.append((name, n, kind, memory["peak_mib"] - memory["before_mib"], memory))
        for name, n, kind, grown, memory in rows:
            print(
                f"   {name:>2} = {n:6d} images  {kind:<10}  +{grown:7.1f} MiB "
                f"(peak {memory['peak_mib']:.1f} MiB)"
            )
        by = {(name, kind): grown for name, _, kind, grown, _ in rows}
        for kind in ("exemplar", "dissection"):
            ratio = (by[("4N", kind)] + 1e-9) / (by[("N", kind)] + 1e-9)
            print(f"   {kind}: growth at 4N ÷ growth at N = {ratio:.2f}")


if __name__ == "__main__":
    main()
