"""Benchmark: ResNet18's ``layer4`` dissected with 16-concept masks, extrapolated to Broden.

NetDissect-Lite's anchor is about 20 minutes for this layer over Broden's 63,305 images on a
GPU of its day; the target here is ≤ 2 minutes on one card. One ``masks`` dissection job runs
through the job runner as the in-process transport runs it (the loader, the two passes, the
merge), after a warm-up job; its images/s give the extrapolation. The JSON is written after
every job (``--out``), so that a run cut short still leaves its figures.

The images are the ``shapes`` generator's, resized to ``--size`` px (bilinear), their masks
with them (nearest): the shape is its class (12 concepts) and the background is one of 4
quadrant concepts, 16 in all. Weights are random (offline): the cost does not depend on them.

    python -m bench.dissection_broden                                     # CPU: 112 px, 64 images
    python -m bench.dissection_broden --device cuda --size 224 --images 4096 \\
        --batch-size 128 --loader-workers 8 --out broden.json             # one GPU card

Keep ``--shard-images`` ≥ ``--images``: a job of one shard counts from its first pass's maps
on disk (see docs/dissection.md); a larger job counts by a second forward in the merge.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from bench.dissection import run
from cnnviz.data.datasets import DatasetRegistry
from cnnviz.data.shapes import CLASSES, generate_with_masks
from cnnviz.models import ModelRegistry
from workers.kinds import Resources

BRODEN_IMAGES = 63_305
TARGET_S = 120.0
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def write_dataset(root: Path, n: int, size: int, seed: int = 5) -> Path:
    """``n`` images of ``size`` px with 16-concept masks, and a models file naming the data
    set ``broden`` and ResNet18 (random weights, input ``size``) ``r18``."""
    images, labels, coverage = generate_with_masks(n, seed)
    half = size // 2
    quadrant = np.zeros((size, size), dtype=np.uint8)
    quadrant[:half, half:], quadrant[half:, :half], quadrant[half:, half:] = 1, 2, 3
    background = (len(CLASSES) + 1 + quadrant).astype(np.uint8)
    for i in range(n):
        name = CLASSES[int(labels[i])]
        for folder in (root / "images" / name, root / "masks" / name):
            folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        image.resize((size, size), Image.Resampling.BILINEAR).save(
            root / "images" / name / f"{i:05d}.png"
        )
        shape = Image.fromarray((coverage[i].numpy() >= 0.5).astype(np.uint8))
        on = np.asarray(shape.resize((size, size), Image.Resampling.NEAREST)).astype(bool)
        mask = np.where(on, int(labels[i]) + 1, background).astype(np.uint8)
        Image.fromarray(mask, mode="L").save(root / "masks" / name / f"{i:05d}.png")
    concepts = ", ".join(f'"{c}"' for c in (*CLASSES, *QUADRANTS))
    models = root / "models.toml"
    models.write_text(
        f'[models.r18]\narch = "resnet18"\nweights = "random"\ninput_size = [{size}, {size}]\n\n'
        f'[datasets.broden]\npath = "{root / "images"}"\nmasks = "{root / "masks"}"\n'
        f"concepts = [{concepts}]\n"
    )
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--shard-images", type=int, default=0, help="0: --images")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    report: dict[str, object] = {"machine": machine(), **vars(args)}

    def save() -> None:
        print(json.dumps(report), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        models_file = write_dataset(Path(tmp), args.images, args.size)
        report["data_s"] = round(time.perf_counter() - started, 2)
        resources = Resources(
            models=ModelRegistry.from_file(models_file, device=args.device),
            datasets=DatasetRegistry.from_file(models_file),
            batch_size=args.batch_size,
            loader_workers=args.loader_workers,
            shard_images=args.shard_images or args.images,
        )
        body = {"dataset": "broden", "layers": ["layer4"], "method": "masks", "k": 16}
        report["warm_s"] = round(run("dissection", body, "r18", resources), 2)  # model, caches
        save()
        seconds = run("dissection", body, "r18", resources)
        rate = args.images / seconds
        report |= {
            "seconds": round(seconds, 2),
            "images_per_s": round(rate, 1),
            "broden_s": round(BRODEN_IMAGES / rate, 1),
            "target_s": TARGET_S,
        }
        save()
    print(
        f"ResNet18 layer4, {args.size} px, 16 concepts, {args.images} images on {args.device}: "
        f"{rate:.1f} images/s → {BRODEN_IMAGES:,} images in {BRODEN_IMAGES / rate / 60:.1f} min "
        f"(target ≤ {TARGET_S / 60:.0f} min; NetDissect-Lite ≈ 20 min)"
    )


if __name__ == "__main__":
    main()
