"""Benchmark: dataset exemplars through the service, against a plain torch floor, in one run.

1. Images/s of ONE real Celery worker (``celery -A workers.app worker -Q gpu --pool prefork
   --concurrency 1``, default settings) running an exemplars job submitted over HTTP (a
   uvicorn subprocess), from ``POST`` to the moment ``GET /v1/jobs/{id}`` says succeeded,
   against a floor written here in plain torch/torchvision: a ``DataLoader`` over the same
   folder (PIL decode, the model's preprocessing, the same batch size and loader processes),
   a forward pass cut at the layer (torchvision's FX feature extractor), and a naive top-k
   (every score kept, one ``topk`` at the end). Target: time per image ≤ 1.15× the floor's.
2. Two workers against one on the same job (its shards spread over both). Target ≥ 1.7×.
3. Peak memory (VmHWM of the worker and of its pool child, and the peak of the worker's
   whole process tree with its DataLoader processes) of a fresh worker mining a data set
   and of another mining one 4× as large: it should stay flat.

The three sides of 1 and 2 are interleaved, repeat by repeat, and the medians compared: on
a shared machine, drift hits every side alike. A second worker is switched on and off with
Celery's own ``add_consumer``/``cancel_consumer`` control commands; the CPU time of each
pool child shows which worked.

Starts its own redis-server on a free port, the API and the workers; writes the images (the
``shapes`` generator, 64 px PNGs in an ImageFolder tree) to a temporary folder::

    python -m bench.exemplars                       # shapes, block3.relu, 4096 and 1024 images
    python -m bench.exemplars --images 8192 --repeats 5
    python -m bench.exemplars --model resnet18 --size 112 --layer layer3 --images 2048
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from celery import Celery
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import api_server, cpu_seconds, machine, run_job
from cnnviz.data.shapes import CLASSES, generate
from cnnviz.models import ModelRegistry
from tests.jobs.procs import CeleryWorker, RedisServer
from workers.config import WorkerSettings

QUEUE = "gpu"
BIG, SMALL = "bench_big", "bench_small"
# The settings a benchmark must not change: everything else is the deployment's default.
TEST_ONLY = (
    "CNNVIZ_WORKER_TORCH_THREADS",
    "CNNVIZ_JOB_PROGRESS_INTERVAL",
    "CNNVIZ_JOB_PREVIEW_INTERVAL",
)


# --- data -------------------------------------------------------------------------------


def write_images(root: Path, n: int, seed: int) -> Path:
    """``n`` generated 64 px shapes images as ``root/<class>/<i>.png``."""
    images, labels = generate(n, seed)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return root


def write_models_file(path: Path, big: Path, small: Path, model: str, size: int) -> Path:
    text = f'[datasets.{BIG}]\npath = "{big}"\n\n[datasets.{SMALL}]\npath = "{small}"\n\n'
    if model != "shapes":  # a torchvision architecture, random weights
        text += (
            f'[models.{model}]\narch = "{model}"\nweights = "random"\n'
            f"input_size = [{size}, {size}]\nmean = [0.485, 0.456, 0.406]\n"
            "std = [0.229, 0.224, 0.225]\n"
        )
    path.write_text(text, encoding="utf-8")
    return path


# --- the floor: plain torch and torchvision -----------------------------------------------


class Folder(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Image files, decoded by PIL and preprocessed as the model wants: ``(x (3, H, W), i)``."""

    def __init__(self, files: list[Path], size: int, mean: Any, std: Any) -> None:
        self.files = files
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), i


def floor(
    extractor: torch.nn.Module,
    files: list[Path],
    *,
    size: int,
    mean: Any,
    std: Any,
    batch_size: int,
    workers: int,
    k: int,
) -> tuple[float, torch.Tensor]:
    """Seconds to mine ``files``, and the top-k image indices ``(C, k)`` of each channel."""
    started = time.perf_counter()
    loader = DataLoader(Folder(files, size, mean, std), batch_size=batch_size, num_workers=workers)
    scores, positions = [], []
    with torch.inference_mode():
        for x, _ in loader:
            out = extractor(x)["out"]
            flat = out.flatten(2) if out.dim() > 2 else out[..., None]
            scores.append(flat.mean(dim=2))
            positions.append(flat.argmax(dim=2))
        top = torch.cat(scores).topk(k, dim=0).indices.t()
    return time.perf_counter() - started, top


# --- the service side ---------------------------------------------------------------------


def mine(api: httpx.Client, model: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds from ``POST`` to a ``GET`` that returns the result, and the result."""
    # Polls gently while far from done (polls cost the cores the job runs on), then often.
    seconds, record = run_job(
        api, f"/v1/models/{model}/exemplars", body, headers={"Cache-Control": "no-cache"}
    )
    return seconds, record["result"]


def start_worker(redis_url: str, workdir: Path, env: dict[str, str]) -> CeleryWorker:
    worker = CeleryWorker(redis_url, workdir, env)
    for name in TEST_ONLY:  # the test fixture's speed-ups: this runs with the defaults
        if name not in env:
            worker.env.pop(name, None)
    return worker.start()


def status_kib(pid: int, key: str, path: str = "") -> int:
    """A ``key: N kB`` line of ``/proc/<pid>/status`` (or of ``path``)."""
    for line in Path(path or f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_pss_kib(root: int) -> int:
    """The proportional set size of process ``root`` and all its descendants, summed.

    PSS, not RSS: forked processes (the pool child, its DataLoader processes) share most of
    their pages with their parent, and RSS would count those pages once per process.
    """
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            total += status_kib(pid, "Pss", f"/proc/{pid}/smaps_rollup")
        todo.extend(p for p, pp in parent.items() if pp == pid)
    return total


@dataclass
class TreePeak:
    """The largest summed PSS of a process and its descendants, sampled every 50 ms."""

    pid: int
    peak_kib: int = 0

    @contextlib.contextmanager
    def sampling(self) -> Iterator[TreePeak]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                self.peak_kib = max(self.peak_kib, tree_pss_kib(self.pid))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


@dataclass
class Memory:
    images: int
    worker_hwm: int
    child_hwm: int
    tree_peak: int


def fresh_memory(
    redis_url: str, workdir: Path, env: dict[str, str], api: httpx.Client, model: str, body: Any
) -> tuple[CeleryWorker, Memory]:
    """A fresh worker mines ``body``'s data set alone; its peaks (KiB). The worker stays."""
    worker = start_worker(redis_url, workdir, env)
    assert worker.process is not None
    with TreePeak(worker.process.pid).sampling() as tree:
        _, result = mine(api, model, body)
    (child,) = worker.pool_children()
    return worker, Memory(
        result["images"],
        status_kib(worker.process.pid, "VmHWM"),
        status_kib(child, "VmHWM"),
        tree.peak_kib,
    )


def consume(control: Celery, worker: CeleryWorker, on: bool) -> None:
    """Switch ``worker``'s consumption of the job queue on or off (a Celery control command)."""
    command = control.control.add_consumer if on else control.control.cancel_consumer
    replies = command(QUEUE, destination=[worker.name], reply=True, timeout=10)
    if not replies:
        raise RuntimeError(f"worker {worker.name} did not answer {command.__name__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="shapes, or a torchvision arch")
    parser.add_argument("--layer", default="block3.relu")
    parser.add_argument("--size", type=int, default=None, help="input px (torchvision models)")
    parser.add_argument("--images", type=int, default=4096, help="the large data set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--shard-images",
        type=int,
        default=None,
        help="CNNVIZ_EXEMPLAR_SHARD_IMAGES for the API and workers (default: the setting's)",
    )
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads on both sides (default: all)"
    )
    args = parser.parse_args()
    defaults = WorkerSettings()
    batch, loaders = defaults.exemplar_batch_size, defaults.exemplar_loader_workers
    small_images = args.images // 4
    env: dict[str, str] = {}
    shard_images = args.shard_images or defaults.exemplar_shard_images
    if args.shard_images is not None:
        env["CNNVIZ_EXEMPLAR_SHARD_IMAGES"] = str(args.shard_images)
    if args.threads is not None:
        env["CNNVIZ_WORKER_TORCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"writing {args.images} + {small_images} images ...", flush=True)
        big = write_images(workdir / BIG, args.images, seed=1)
        small = write_images(workdir / SMALL, small_images, seed=2)
        models = write_models_file(
            workdir / "models.toml", big, small, args.model, args.size or 224
        )
        env["CNNVIZ_MODELS_FILE"] = str(models)
        loaded = ModelRegistry.from_file(models).get(args.model)
        spec = loaded.spec
        size = spec.input_size[0]
        extractor = create_feature_extractor(loaded.module, {args.layer: "out"}).eval()
        files = sorted(p for p in big.rglob("*.png"))
        body = {"dataset": BIG, "layers": [args.layer], "k": args.k}

        redis_server = RedisServer(workdir).start()
        env["CNNVIZ_REDIS_URL"] = redis_server.url
        control = Celery(broker=redis_server.url, set_as_current=False)
        workers: list[CeleryWorker] = []
        try:
            with (
                api_server(env) as server,
                httpx.Client(base_url=server.url, timeout=60) as api,
            ):
                # 3. memory: a fresh worker per data set size, each mining alone.
                print("memory: a fresh worker per data set ...", flush=True)
                one, small_mem = fresh_memory(
                    redis_server.url, workdir, env, api, args.model, {**body, "dataset": SMALL}
                )
                workers.append(one)
                consume(control, one, False)
                two, big_mem = fresh_memory(redis_server.url, workdir, env, api, args.model, body)
                workers.append(two)
                consume(control, one, True)

                # 1 and 2, interleaved: floor, one worker, two workers.
                children_of = [w.pool_children()[0] for w in workers]
                floor_s, one_s, two_s = [], [], []
                one_cpu: list[list[float]] = []
                two_cpu: list[list[float]] = []
                result: dict[str, Any] = {}
                top = torch.empty(0)
                for repeat in range(args.repeats):
                    print(f"repeat {repeat + 1} of {args.repeats} ...", flush=True)
                    seconds, top = floor(
                        extractor,
                        files,
                        size=size,
                        mean=spec.mean,
                        std=spec.std,
                        batch_size=batch,
                        workers=loaders,
                        k=args.k,
                    )
                    floor_s.append(seconds)
                    for both, wall, cpu in ((False, one_s, one_cpu), (True, two_s, two_cpu)):
                        consume(control, two, both)
                        before = [cpu_seconds(c, children=True) for c in children_of]
                        seconds, mined = mine(api, args.model, body)
                        wall.append(seconds)
                        after = [cpu_seconds(c, children=True) for c in children_of]
                        cpu.append([a - b for a, b in zip(after, before, strict=True)])
                        if not both:
                            result = mined
        finally:
            for worker in workers:
                worker.stop()
            redis_server.stop()
            control.close()

    n = result["images"]
    f, o, t = (statistics.median(s) for s in (floor_s, one_s, two_s))
    same = "n/a (random weights differ between processes)"
    if spec.weights != "random":
        (layer,) = result["layers"]
        service_top = [[dict(e)["image"] for e in u["top"]] for u in layer["units"]]
        floor_top = [[files[i].relative_to(big).as_posix() for i in row] for row in top.tolist()]
        agree = sum(a == b for a, b in zip(service_top, floor_top, strict=True))
        same = f"{agree} of {len(service_top)} channels"
    print()
    print(f"machine: {machine()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"job: {args.model} {args.layer} at {size} px, k={args.k}, {n} images of 64 px PNG, "
        f"shards of {shard_images}, batch {batch}, {loaders} loader "
        f"processes, torch threads {args.threads or 'all cores'}; medians of {args.repeats}"
    )
    print("1. one worker, POST to result, against a DataLoader + forward + top-k floor:")
    print(f"   floor      {f:7.3f} s  {n / f:8.1f} images/s")
    print(f"   1 worker   {o:7.3f} s  {n / o:8.1f} images/s")
    print(f"   time per image: {o / f:.3f}x the floor's   (target <= 1.15)")
    print(f"   same top-{args.k} images as the floor: {same}")
    cpu1 = [statistics.median(c[i] for c in one_cpu) for i in (0, 1)]
    cpu2 = [statistics.median(c[i] for c in two_cpu) for i in (0, 1)]
    print(f"   CPU s of each pool child (with its loaders): {cpu1[0]:.2f}, {cpu1[1]:.2f} (idle)")
    print("2. two workers against one, the same job:")
    print(f"   1 worker   {o:7.3f} s  {n / o:8.1f} images/s")
    print(f"   2 workers  {t:7.3f} s  {n / t:8.1f} images/s   ({o / t:.2f}x, target >= 1.7)")
    print(f"   CPU s of each pool child (with its loaders): {cpu2[0]:.2f}, {cpu2[1]:.2f}")
    print(
        f"   CPU s per image: 1 worker {sum(cpu1) / n * 1000:.2f} ms, 2 workers "
        f"{sum(cpu2) / n * 1000:.2f} ms; machine load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs (on a busy machine, more processes get more of its time)"
    )
    print("3. peak memory of a fresh worker, data set grown 4x (MiB):")
    for mem in (small_mem, big_mem):
        print(
            f"   {mem.images:6d} images: worker {mem.worker_hwm / 1024:6.0f}, pool child "
            f"{mem.child_hwm / 1024:6.0f}; PSS of worker + child + loaders "
            f"{mem.tree_peak / 1024:6.0f}"
        )
    print(
        f"   ratio 4x/1x: pool child {big_mem.child_hwm / small_mem.child_hwm:.3f}, "
        f"tree {big_mem.tree_peak / small_mem.tree_peak:.3f}   (target: flat, ~1.0)"
    )


if __name__ == "__main__":
    main()
