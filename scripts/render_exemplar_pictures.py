"""Render docs/img/exemplars_block3_relu.png: for a few channels of block3.relu of the built-in
model, the optimized pattern (left) next to the channel's top dataset exemplars (right),
full images and receptive-field crops.

    python scripts/render_exemplar_pictures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.exemplars import exemplar_tiles
from cnnviz.imaging import encode_png, image_grid
from cnnviz.models import ModelRegistry
from schemas.exemplars import ExemplarsCreate
from schemas.optimization import OptimizationCreate
from workers.kinds import JobContext, Resources, get_kind
from workers.kinds.optimization import optimize

LAYER = "block3.relu"
CHANNELS = [1, 5, 9, 14]
TOP = 6
OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "exemplars_block3_relu.png"


def main() -> None:
    torch.manual_seed(0)
    models = ModelRegistry.from_file(None)
    datasets = DatasetRegistry()
    resources = Resources(models=models, datasets=datasets, shard_images=10_000, batch_size=200)
    kind = get_kind("exemplar")
    request = kind.prepare(
        ExemplarsCreate(dataset="shapes", layers=[LAYER], k=TOP), "shapes", resources
    )
    partial = kind.run_shard(request, "shapes", 0, resources, JobContext())
    result = kind.merge(request, "shapes", [partial], resources)
    loaded = models.get("shapes")
    spec = loaded.spec
    dataset = datasets.get("shapes")
    optimized = optimize(
        OptimizationCreate(layer=LAYER, channels=CHANNELS, steps=256, image_size=64), loaded
    )
    rows = []
    for i, channel in enumerate(CHANNELS):
        unit = result.layers[0].units[channel]
        images = [dataset.image(dataset.position(e.image)) for e in unit.top]
        x = torch.cat([spec.preprocess(im) for im in images])
        positions = [(e.position[0], e.position[1]) for e in unit.top]
        full = exemplar_tiles(
            loaded.index, x, positions, LAYER, channel, "full", mean=spec.mean, std=spec.std
        )
        crop = exemplar_tiles(
            loaded.index, x, positions, LAYER, channel, "crop", mean=spec.mean, std=spec.std
        )
        pattern = _decode(optimized.units[i].image)
        rows.append(torch.cat([pattern[None], full, crop]))
    grid, _ = image_grid(torch.cat(rows), columns=1 + 2 * TOP, padding=3)
    OUT.write_bytes(encode_png(grid))
    print(f"wrote {OUT}")


def _decode(b64: str) -> torch.Tensor:
    import base64
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").resize((64, 64))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


if __name__ == "__main__":
    main()
