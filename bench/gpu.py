"""The GPU in one script: an optimization step against its floor, a dataset pass against its
ceilings, feature maps against theirs. Writes its JSON as it goes (a cut run still tells).

1. **Step.** A whole layer's render (resnet18 ``layer3``, random weights, all 256 channels,
   128 px fed at 224, precision ``auto``: bf16 and channels-last on a CUDA card), eager and
   compiled (``RenderSettings.compile``), in seconds per optimization step (render time ÷
   steps × chunks, evaluations and all), against the floor: ``torch.compile`` of
   ``create_feature_extractor(resnet18, ["layer3"])``, forward and backward to the input at
   the render's chunk size, bf16, channels-last. TFLOP/s from ``FlopCounterMode`` over one
   floor step (forward plus backward to the input, weights frozen, as the README counts).
2. **Dataset pass.** ``--images`` generated 256×256 JPEGs at quality 90, resized to 224,
   through resnet18 ``layer4`` in fp32 with :func:`cnnviz.exemplars.mine` (the exemplar
   pass): decoded on the device (``torchvision.io.decode_jpeg(device="cuda")`` in batches,
   resize and normalisation on the device, file bytes read by loader processes into pinned
   memory), and decoded by Pillow in loader processes (the product's path today), against
   two ceilings: decoded tensors fed from device memory (model-bound) and device decoding
   alone (decode-bound). Target: the device-decoding pass ≥ 0.8× the lower ceiling.
3. **Feature maps.** :func:`cnnviz.featuremaps.feature_maps` (resnet18 ``layer2``, one image,
   fp32, the core path without HTTP) from 1 and 8 threads against bench.feature_maps' floor
   (torchvision, ``make_grid``, a Pillow PNG), in images/s.

Without CUDA it runs the same code at tiny sizes on the CPU in seconds, eager only (a test
runs it, so that it does not rot); the figures then mean nothing.

On a device machine with torch only, carry the service's wheels: build them here with
``.venv/bin/pip wheel --no-deps -w device-wheels torchvision==0.29.1 pillow numpy
safetensors`` (the ``carry`` list: ``device-wheels``), then run there::

    pip install --no-index --no-deps device-wheels/*.whl && python -m bench.gpu --out $OUT/gpu.json

About 4 minutes on an H100 (the compile of the step and the floor is most of it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from torchvision.io import decode_jpeg
from torchvision.models.feature_extraction import create_feature_extractor

from cnnviz.data.loader import model_batches
from cnnviz.exemplars import mine
from cnnviz.featuremaps import feature_maps
from cnnviz.imaging import normalize
from cnnviz.layers import layer_index
from cnnviz.optvis import RenderSettings, device_memory_budget_mb, objectives, visualize
from cnnviz.precision import resolve_precision

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Report:
    """The JSON document, written again after every figure."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.data: dict[str, Any] = {"device": name, "torch": torch.__version__}
        self.write()

    def add(self, section: str, **figures: Any) -> None:
        self.data.setdefault(section, {}).update(figures)
        self.write()
        print(section, json.dumps(figures), flush=True)

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2), encoding="utf-8")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], object], device: torch.device, repeat: int = 1) -> float:
    """Median seconds of ``repeat`` calls (device work included)."""
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resnet18(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    return model.requires_grad_(False)


def step_figures(report: Report, device: torch.device, small: bool) -> None:
    """Section 1: the render's step against the compiled floor."""
    model = resnet18(device)
    side, input_side = (16, 32) if small else (128, 224)
    channels, steps = (2, 2) if small else (256, 16)

    def render(settings: RenderSettings) -> Any:
        return visualize(
            model,
            objective,
            input_shape=(3, input_side, input_side),
            mean=MEAN,
            std=STD,
            settings=settings,
            device=device,
        )

    objective = objectives.channel("layer3", list(range(channels)))
    # The service's budget: a quarter of the card, so that a whole layer fits few chunks.
    budget = device_memory_budget_mb(device)
    settings = RenderSettings(
        steps=steps, image_size=side, redirect_relu_steps=0, memory_budget_mb=budget
    )
    modes = [False, True] if device.type == "cuda" else [False]
    chunk = 1
    for compiled in modes:
        run = replace(settings, compile=compiled)
        render(run)  # compile, warm-up
        start = time.perf_counter()
        result = render(run)
        sync(device)
        per_step = (time.perf_counter() - start) / (steps * result.n_chunks)
        chunk = result.chunk_size
        name = "compiled" if compiled else "eager"
        report.add("step", **{f"{name}_s": per_step, "chunk": chunk, "chunks": result.n_chunks})
    numerics = resolve_precision("auto", device)
    extractor = create_feature_extractor(model, ["layer3"])
    floor_module = torch.compile(extractor) if device.type == "cuda" else extractor
    x = torch.rand(chunk, 3, input_side, input_side, device=device)

    def floor_step() -> None:
        image = x.clone().requires_grad_(True)
        out = numerics.run(floor_module, image)["layer3"]
        out.mean().backward()

    with FlopCounterMode(display=False) as counter:
        image = x.clone().requires_grad_(True)
        numerics.run(extractor, image)["layer3"].mean().backward()
    flops = counter.get_total_flops()
    floor_step()  # compile
    floor_s = timed(floor_step, device, repeat=5)
    best = min(report.data["step"].get(k, math.inf) for k in ("eager_s", "compiled_s"))
    report.add(
        "step",
        floor_s=floor_s,
        precision=numerics.precision,
        gflop_per_step=flops / 1e9,
        floor_tflops=flops / floor_s / 1e12,
        step_tflops=flops / best / 1e12,
        step_vs_floor=floor_s / best,
    )


def write_jpegs(root: Path, n: int, side: int) -> list[Path]:
    """``n`` smooth random ``side``² JPEGs at quality 90 (noise compresses unlike photos)."""
    g = np.random.default_rng(0)
    paths = []
    for i in range(n):
        low = (g.random((8, 8, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC)
        path = root / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


class Bytes(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torchvision.io.read_file(str(self.paths[i])), i


class Decoded(torch.utils.data.Dataset[tuple[torch.Tensor, int, bool]]):
    """Pillow decoding, resize and normalisation in the loader: what the product does."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        image = Image.open(self.paths[i]).convert("RGB").resize((self.size, self.size))
        x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float().div(255)
        return normalize(x, MEAN, STD), i, True


def _listed(batch: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [b for b, _ in batch], torch.tensor([i for _, i in batch])


def device_batches(
    loader: torch.utils.data.DataLoader[Any], device: torch.device, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """File bytes from the loader, decoded, resized and normalised on ``device``."""
    mean = torch.tensor(MEAN, device=device)
    std = torch.tensor(STD, device=device)
    for data, index in loader:
        images = torch.stack(decode_jpeg(data, device=device)).float().div_(255)
        x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        yield normalize(x, mean, std), index, torch.ones(len(index), dtype=torch.bool)


def dataset_figures(report: Report, device: torch.device, small: bool, n: int) -> None:
    """Section 2: the exemplar pass, decoded on the device and by Pillow, and its ceilings."""
    model = resnet18(device)
    batch = 8 if small else 256
    workers = min(8, os.cpu_count() or 1) if not small else 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n, 48 if small else 256)
        size = 32 if small else 224
        index = layer_index(model, (3, size, size))

        def loader(dataset: Any, collate: Any = None) -> torch.utils.data.DataLoader[Any]:
            return model_batches(
                dataset, batch_size=batch, workers=workers, device=device, collate=collate
            )

        def images_per_s(call: Callable[[], object]) -> float:
            return n / timed(call, device)

        if device.type == "cuda":
            decode_device = lambda: mine(  # noqa: E731
                index,
                device_batches(loader(Bytes(paths), _listed), device, size),
                ["layer4"],
                k=8,
                device=device,
            )
            report.add("dataset", device_decode_pass=images_per_s(decode_device))
            data = [torchvision.io.read_file(str(p)) for p in paths]
            report.add(
                "dataset",
                decode_only=images_per_s(
                    lambda: [
                        decode_jpeg(data[i : i + batch], device=device) for i in range(0, n, batch)
                    ]
                ),
            )
        cpu_pass = lambda: mine(  # noqa: E731
            index, loader(Decoded(paths, size)), ["layer4"], k=8, device=device
        )
        report.add("dataset", cpu_decode_pass=images_per_s(cpu_pass), loader_workers=workers)
        x = torch.randn(batch, 3, size, size, device=device)

        def model_only() -> None:
            with torch.inference_mode():
                for _ in range(0, n, batch):
                    index.capture(x, ["layer4"])

        report.add("dataset", model_only=images_per_s(model_only))
    figures = report.data["dataset"]
    if "device_decode_pass" in figures:
        ceiling = min(figures["model_only"], figures["decode_only"])
        report.add("dataset", device_pass_vs_ceiling=figures["device_decode_pass"] / ceiling)


def throughput(call: Callable[[], object], clients: int, seconds: float) -> float:
    """Calls a second of ``clients`` threads calling ``call`` one after another."""
    done = [0] * clients
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        while time.monotonic() < end:
            call()
            done[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def feature_map_figures(report: Report, device: torch.device, seconds: float) -> None:
    """Section 3: feature maps from 1 and 8 threads against the torchvision floor."""
    from bench.feature_maps import Floor

    model = resnet18(device)
    image = Image.fromarray((np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8))
    floor = Floor(image, device)
    x = floor.x[0]

    def product() -> bytes:
        return feature_maps(model, x, ["layer2"])[0].png()

    for name, call in (("cnnviz", product), ("floor", floor)):
        call()  # warm-up
        for clients in (1, 8):
            rate = throughput(call, clients, seconds)
            report.add("feature_maps", **{f"{name}_{clients}_per_s": rate})
    figures = report.data["feature_maps"]
    for clients in (1, 8):
        ratio = figures[f"floor_{clients}_per_s"] / max(figures[f"cnnviz_{clients}_per_s"], 1e-9)
        report.add("feature_maps", **{f"time_vs_floor_{clients}": ratio})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="of each feature-map burst")
    parser.add_argument("--only", default="step,dataset,features")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = device.type != "cuda"
    report = Report(args.out, device)
    parts = args.only.split(",")
    if "step" in parts:
        step_figures(report, device, small)
    if "dataset" in parts:
        dataset_figures(report, device, small, 8 if small else args.images)
    if "features" in parts:
        feature_map_figures(report, device, 0.2 if small else args.seconds)
    return report.data


if __name__ == "__main__":
    main()
