"""The machine interpretability score on planted units: one concept each, or two at once."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cnnviz.layers import layer_index
from cnnviz.mis import QUERIES, REFERENCES, Embeddings, Extremes, default_encoder_layer, embed
from cnnviz.mis import scores as mis_scores

CONCEPTS = 8  # the corners of the RGB cube: eight colours, none a mix of two others
PER_CONCEPT = 40
SIZE = 32
CORNERS = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))  # (8, 3)


def colour_images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, 32, 32)`` images in [0, 1] and their concepts ``(N,)``: a square of one
    corner colour (jittered by up to 0.1), of side 8..20 anywhere, on grey noise."""
    g = torch.Generator().manual_seed(seed)
    concepts = torch.arange(CONCEPTS).repeat_interleave(PER_CONCEPT)
    n = len(concepts)
    images = 0.5 + 0.1 * (torch.rand((n, 3, SIZE, SIZE), generator=g) - 0.5)
    for i, k in enumerate(concepts.tolist()):
        side = int(torch.randint(8, 21, (1,), generator=g))
        y, x = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=g))
        colour = (CORNERS[k] + 0.1 * (torch.rand(3, generator=g) - 0.5)).clamp(0, 1)
        images[i, :, y : y + side, x : x + side] = colour[:, None, None]
    return images, concepts


def colour_encoder() -> nn.Module:
    """A 1×1 convolution onto the eight centred corner colours, ReLU, global average pool:
    an image's embedding is how much of each colour it holds."""
    conv = nn.Conv2d(3, CONCEPTS, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_((CORNERS - 0.5).view(CONCEPTS, 3, 1, 1))
        conv.bias.copy_(-(CORNERS - 0.5).sum(dim=1) * 0.5)  # grey (0.5, 0.5, 0.5) gives 0
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.fixture(scope="module")
def embedded() -> tuple[Embeddings, torch.Tensor]:
    images, concepts = colour_images()
    index = layer_index(colour_encoder(), (3, SIZE, SIZE), "colours")
    layer = default_encoder_layer(index)
    assert layer == "2"  # the pool: the layer before the last
    ids = torch.arange(len(images))
    batches = [(images[i : i + 64], ids[i : i + 64], torch.ones(64)) for i in range(0, 320, 64)]
    return embed(index, layer, batches), concepts


def planted(concepts: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``(N, CONCEPTS)`` unit activations: unit k is 1 plus noise on concept k, noise
    elsewhere (the noise in [0, 0.5) only orders images within a concept)."""
    g = torch.Generator().manual_seed(seed)
    onehot = (concepts[:, None] == torch.arange(CONCEPTS)[None]).float()
    return onehot + 0.5 * torch.rand(onehot.shape, generator=g)


def unit_scores(units: torch.Tensor, embeddings: Embeddings) -> list[float]:
    n, c = units.shape
    extremes = Extremes(c)
    extremes.update(units, torch.arange(n), torch.zeros((n, c, 2), dtype=torch.long))
    out = mis_scores(extremes, n, embeddings)
    assert all(s is not None and 0.0 <= s <= 1.0 for s in out)
    return [float(s) for s in out if s is not None]


def test_a_unit_of_two_concepts_scores_below_each_of_its_concepts_alone(
    embedded: tuple[Embeddings, torch.Tensor],
) -> None:
    embeddings, concepts = embedded
    detectors = planted(concepts)
    pairs = list(itertools.combinations(range(CONCEPTS), 2))  # 28
    both = torch.stack([detectors[:, a].maximum(detectors[:, b]) for a, b in pairs], dim=1)
    alone = unit_scores(detectors, embeddings)
    mixed = unit_scores(both, embeddings)
    below = [mixed[i] < min(alone[a], alone[b]) for i, (a, b) in enumerate(pairs)]
    assert sum(below) / len(pairs) >= 0.95, (alone, mixed)
    assert min(alone) > 0.9


def test_a_unit_whose_ranking_is_noise_scores_about_one_half(
    embedded: tuple[Embeddings, torch.Tensor],
) -> None:
    embeddings, concepts = embedded
    noise = torch.rand((len(concepts), 16), generator=torch.Generator().manual_seed(2))
    random = unit_scores(noise, embeddings)
    assert abs(sum(random) / len(random) - 0.5) < 0.1, random


def test_too_few_images_for_held_out_queries_give_no_score() -> None:
    images = 2 * REFERENCES + 1  # one short of a held-out pair
    extremes = Extremes(1)
    extremes.update(
        torch.rand((images, 1)), torch.arange(images), torch.zeros((images, 1, 2), dtype=torch.long)
    )
    vectors = torch.eye(images)
    assert mis_scores(extremes, images, Embeddings({i: i for i in range(images)}, vectors)) == [
        None
    ]
    assert QUERIES == 20


def test_extremes_merge_as_one_pass() -> None:
    scores = torch.rand((100, 4), generator=torch.Generator().manual_seed(3))
    ids, where = torch.arange(100), torch.zeros((100, 4, 2), dtype=torch.long)
    whole, halves = Extremes(4), [Extremes(4), Extremes(4)]
    whole.update(scores, ids, where)
    halves[0].update(scores[:37], ids[:37], where[:37])
    halves[1].update(scores[37:], ids[37:], where[37:])
    merged = Extremes.from_json(halves[0].to_json())
    merged.merge(Extremes.from_json(halves[1].to_json()))
    assert torch.equal(merged.top.index, whole.top.index)
    assert torch.equal(merged.bottom.index, whole.bottom.index)
    assert merged.images() == whole.images()
