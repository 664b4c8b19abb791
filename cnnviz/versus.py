"""An image against a data set: how strongly a unit responds to it, next to the data set's best.

An optimized pattern is only worth showing if the unit responds to it at least as strongly as
to real images; a pattern weaker than the unit's top exemplar says the optimization missed what
the unit detects. :func:`pooled_scores` scores images exactly as an exemplar pass scores a
data set's (:func:`cnnviz.exemplars.pool` over :func:`cnnviz.axes.unit_maps`, at the model's
input size, without random transforms); :func:`rank_among` places a score among the data set's
stored top-k scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnviz.axes import unit_maps
from cnnviz.exemplars import Pool, pool
from cnnviz.imaging.preprocess import normalize
from cnnviz.layers import LayerIndex
from cnnviz.optvis.transform import Resize

__all__ = ["pooled_scores", "rank_among"]

_BATCH = 32  # images per forward: a layer of 512 patterns at 224 px stays well under 1 GiB


def pooled_scores(
    index: LayerIndex,
    images: torch.Tensor,
    layer: str,
    how: Pool,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Every unit's pooled activation ``(N, units)`` float32 (CPU) for ``images``.

    ``images`` is ``(N, C, S, S)`` float32 in [0, 1] (an optimization's patterns, at any side);
    each is resized bilinearly to ``input_size`` (the resize a render evaluates its images
    with), normalised with ``mean`` and ``std`` and run in fp32 up to ``layer``; ``how`` pools
    each unit's map as the exemplar pass does (``mean`` or ``max``).
    """
    info = index.usable([layer])[0]
    resize = Resize(input_size)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    scores = []
    with torch.inference_mode():  # capture leaves the model's modes as it found them
        for batch in images.split(_BATCH):
            x = resize(batch.to(device, torch.float32), batch.new_empty((len(batch), 0)))
            out = index.capture(normalize(x, mean_t, std_t), [layer])[layer]
            scores.append(pool(unit_maps(out, info), how)[0].cpu())
    return torch.cat(scores)


def rank_among(score: float, top: Sequence[float], images: int) -> int | None:
    """Where ``score`` would rank among a data set of ``images`` whose best scores are ``top``
    (the stored top-k, best first): 1 + the images that score strictly higher.

    Exact while ``score`` reaches the lowest stored score, or when every image is stored
    (``len(top) >= images``); None below the stored top-k, where only ``rank > len(top)`` is
    known.
    """
    if len(top) < images and (not top or score < min(top)):
        return None
    return 1 + sum(1 for s in top if s > score)
