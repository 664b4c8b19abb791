"""The machine interpretability score (MIS): how well a unit's exemplars explain it, no humans.

Borowski et al. (ICLR 2021) measure how well people understand a unit with a 2-alternative
task: shown the unit's most and least activating images (the references), they pick which
of two held-out query images activates it more. Zimmermann, Klindt and Brendel (NeurIPS
2024) replace the person by an image encoder and a fixed decision rule, and call the mean
probability of the right choice the MIS. Our version, stated in full in
``docs/dissection.md``:

* references: the unit's :data:`REFERENCES` most and :data:`REFERENCES` least activating
  images (mean activation, as the exemplars rank them);
* queries, held out: the images of ranks ``REFERENCES + 1 .. REFERENCES + n`` from the top
  (strong) and from the bottom (weak), ``n <= QUERIES``; a task pairs one strong query with
  one weak one, every such pairing is a task (``n²``);
* each image is embedded by an encoder (a layer's unit maps averaged over positions) and
  compared by cosine similarity; a query's evidence is its mean similarity to the top
  references minus its mean similarity to the bottom ones;
* the observer picks the strongly activating query with probability
  ``sigmoid((evidence(q+) - evidence(q-)) / t)``, ``t`` = :data:`TEMPERATURE_SCALE` × the
  spread of the encoder's similarities; MIS is its mean over the tasks.

A unit that detects one thing has references alike and a query like them: MIS near 1. A unit
that responds to two unrelated things has references that are half unlike any query: lower.
A unit whose ranking is noise: 0.5 on average.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnviz.axes import unit_maps
from cnnviz.exemplars import TopK, pool
from cnnviz.layers import LayerIndex

__all__ = [
    "QUERIES",
    "REFERENCES",
    "TEMPERATURE_SCALE",
    "Embeddings",
    "Extremes",
    "default_encoder_layer",
    "embed",
    "scores",
    "temperature",
]

REFERENCES = 9  # per side, as in Borowski et al.'s and Zimmermann et al.'s tasks
QUERIES = 20  # held-out queries per side at most: Zimmermann et al. average 20 tasks
# The observer's temperature is this fraction of the spread (standard deviation) of the
# cosine similarities between the embedded images, so that it reads any encoder on its own
# scale: a fixed temperature saturates an encoder whose similarities spread widely (every
# unit near 1) and flattens one whose similarities crowd together. Measured on the planted
# colour units of ``tests/core/test_mis.py``: 0.25 leaves 2 of 28 two-concept units tied
# with a one-concept unit at 0.999; 0.5 and 1.0 rank all 28 below both.
TEMPERATURE_SCALE = 0.5
_SPREAD_IMAGES = 1024  # images whose pairwise similarities give the spread: 0.5 M pairs


class Extremes:
    """Each of ``channels`` units' ``depth`` most and least activating images, as two
    :class:`~cnnviz.exemplars.TopK`: exact and associative to merge, so shards agree."""

    def __init__(
        self, channels: int, depth: int = REFERENCES + QUERIES, device: torch.device | str = "cpu"
    ) -> None:
        self.top = TopK(channels, depth, True, device)
        self.bottom = TopK(channels, depth, False, device)

    def update(self, scores: torch.Tensor, index: torch.Tensor, position: torch.Tensor) -> None:
        """A batch as :meth:`TopK.update` takes it: ``scores (N, C)``, ``index (N,)``."""
        self.top.update(scores, index, position)
        self.bottom.update(scores, index, position)

    def merge(self, other: Extremes) -> None:
        self.top.merge(other.top)
        self.bottom.merge(other.bottom)

    def to_json(self) -> dict[str, dict[str, list]]:
        return {"top": self.top.to_json(), "bottom": self.bottom.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, dict[str, list]]) -> Extremes:
        top = TopK.from_json(data["top"], len(data["top"]["scores"][0]), True)
        out = cls(top.scores.shape[0], top.k)
        out.top = top
        out.bottom = TopK.from_json(data["bottom"], top.k, False)
        return out

    def images(self) -> list[int]:
        """Every image index any unit ranks, sorted: what the encoder must embed."""
        both = torch.cat([self.top.index.flatten(), self.bottom.index.flatten()])
        return sorted(int(i) for i in both.unique() if i >= 0)


def default_encoder_layer(index: LayerIndex) -> str:
    """The model's penultimate usable layer (``flatten`` for the shapes model, ``avgpool``'s
    flattening for torchvision's ResNets): its image embedding, the input of its classifier."""
    usable = [info.name for info in index.layers() if info.axes is not None]
    return usable[-2] if len(usable) > 1 else usable[-1]


@dataclass(frozen=True)
class Embeddings:
    """Unit-length embeddings ``vectors (M, D) float32`` of the images ``rows`` maps to."""

    rows: dict[int, int]
    vectors: torch.Tensor

    def of(self, images: Sequence[int]) -> torch.Tensor:
        """``(len(found), D)``: the rows of those of ``images`` that were embedded."""
        found = [self.rows[i] for i in images if i in self.rows]
        return self.vectors[found]


def embed(
    index: LayerIndex,
    layer: str,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
) -> Embeddings:
    """Images as ``layer``'s unit maps averaged over positions, L2-normalised, from
    ``batches`` of ``(x (B, C, H, W), image index (B,), ok (B,))`` as the exemplar pass takes
    them (images not ``ok`` are left out)."""
    [info] = index.usable([layer])
    rows: dict[int, int] = {}
    parts: list[torch.Tensor] = []
    with torch.inference_mode():
        for x, image_index, ok in batches:
            keep = ok.bool()
            if not keep.any():
                continue
            outputs = index.capture(x[keep].to(device, non_blocking=True), [layer])
            pooled, _ = pool(unit_maps(outputs[layer], info), "mean")
            parts.append(F.normalize(pooled.float(), dim=1).cpu())
            for i in image_index[keep].tolist():
                rows[int(i)] = len(rows)
    vectors = torch.cat(parts) if parts else torch.empty((0, 0))
    return Embeddings(rows, vectors)


def _evidence(queries: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """``(n,)``: each query's mean cosine to the top references minus that to the bottom."""
    return (queries @ top.T).mean(dim=1) - (queries @ bottom.T).mean(dim=1)


def temperature(embeddings: Embeddings) -> float:
    """:data:`TEMPERATURE_SCALE` × the standard deviation of the cosine similarities between
    the first :data:`_SPREAD_IMAGES` embedded images (distinct pairs); at least 1e-6."""
    vectors = embeddings.vectors[:_SPREAD_IMAGES].double()
    if len(vectors) < 3:
        return 1.0
    sims = vectors @ vectors.T
    pairs = sims[torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)]
    return max(TEMPERATURE_SCALE * float(pairs.std()), 1e-6)


def _unit(
    extremes: Extremes, channel: int, images: int, embeddings: Embeddings, temperature: float
) -> float | None:
    tasks = min(QUERIES, (images - 2 * REFERENCES) // 2)
    if tasks < 1:  # too few images for references and held-out queries that do not overlap
        return None
    depth = REFERENCES + tasks
    top = [int(i) for i in extremes.top.index[channel, :depth].tolist()]
    bottom = [int(i) for i in extremes.bottom.index[channel, :depth].tolist()]
    high, low = embeddings.of(top[:REFERENCES]), embeddings.of(bottom[:REFERENCES])
    strong, weak = embeddings.of(top[REFERENCES:]), embeddings.of(bottom[REFERENCES:])
    if not (len(high) and len(low) and len(strong) and len(weak)):
        return None
    # Every strong query against every weak one: n² tasks of the same kind as Borowski et
    # al.'s n, the same expectation with less variance (on the planted colour units, n pairs
    # left 2 of 28 two-concept units above a one-concept unit by chance; n² pairs, none).
    margin = _evidence(strong, high, low)[:, None] - _evidence(weak, high, low)[None, :]
    return float(torch.sigmoid(margin.double() / temperature).mean())


def scores(extremes: Extremes, images: int, embeddings: Embeddings) -> list[float | None]:
    """Each unit's MIS in [0, 1], from its ``extremes`` over a data set of ``images`` images
    and the encoder's ``embeddings`` of them; ``None`` where the data set has fewer than
    ``2 * (REFERENCES + 1)`` images (no held-out query) or none of a unit's images could be
    embedded."""
    channels = extremes.top.scores.shape[0]
    t = temperature(embeddings)
    return [_unit(extremes, c, images, embeddings, t) for c in range(channels)]
