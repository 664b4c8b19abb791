"""MIS with the default encoder on the built-in data: do two-class units score below each class?

Planted units on the ``shapes`` classes (unit k: 1 + noise in [0, 0.5) on class k, noise
elsewhere; a two-class unit is the maximum of two), embedded by the ``shapes`` model's
penultimate layer (the default encoder), 60 images of each class. Prints the one-class
scores and the fraction of the 66 pairs whose two-class unit scores below both classes
alone (docs/dissection.md: 47 of 66 measured).

    PYTHONPATH=. python bench/mis_shapes.py
"""

from __future__ import annotations

import itertools
import json

import torch

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.data.loader import ModelInputs, model_batches
from cnnviz.data.shapes import CLASSES
from cnnviz.mis import Extremes, default_encoder_layer, embed, scores
from cnnviz.models import ModelRegistry

PER_CLASS = 60


def main() -> None:
    dataset = DatasetRegistry().get("shapes")
    loaded = ModelRegistry.from_file(None).get("shapes")
    spec = loaded.spec
    targets = torch.tensor(dataset.targets)
    classes = len(CLASSES)
    chosen = torch.cat([(targets == c).nonzero().flatten()[:PER_CLASS] for c in range(classes)])
    chosen = chosen.sort().values
    inputs = ModelInputs(
        dataset,
        chosen.tolist(),
        size=spec.input_size,
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
    )
    layer = default_encoder_layer(loaded.index)
    embeddings = embed(loaded.index, layer, model_batches(inputs, batch_size=64))
    onehot = (targets[chosen][:, None] == torch.arange(classes)[None]).float()
    alone = onehot + 0.5 * torch.rand(onehot.shape, generator=torch.Generator().manual_seed(0))
    pairs = list(itertools.combinations(range(classes), 2))
    both = torch.stack([alone[:, a].maximum(alone[:, b]) for a, b in pairs], dim=1)
    units = torch.cat([alone, both], dim=1)
    extremes = Extremes(units.shape[1])
    where = torch.zeros((len(chosen), units.shape[1], 2), dtype=torch.long)
    extremes.update(units, chosen, where)
    mis = [float(s or 0.0) for s in scores(extremes, len(chosen), embeddings)]
    one, two = mis[:classes], mis[classes:]
    below = [two[i] < min(one[a], one[b]) for i, (a, b) in enumerate(pairs)]
    report = {
        "encoder": f"shapes {layer}",
        "one_class": {CLASSES[c]: round(one[c], 3) for c in range(classes)},
        "pairs_below_both": f"{sum(below)}/{len(pairs)}",
        "not_below": [
            f"{CLASSES[a]}+{CLASSES[b]}" for (a, b), ok in zip(pairs, below, strict=True) if not ok
        ],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
