"""A pattern against a data set, on a hand-wired net whose activations are the pixels."""

from __future__ import annotations

import pytest
import torch

from cnnviz.layers import layer_index
from cnnviz.versus import pooled_scores, rank_among
from tests.api.nets import OneByOne


def test_pooled_scores_are_the_pixels_closed_forms() -> None:
    # OneByOne: channels x, 1 - x and 2x of the grey level, then a ReLU.
    model = OneByOne()
    index = layer_index(model, (1, 8, 8))
    image = torch.zeros((1, 1, 8, 8))
    image[..., :4, :] = 0.75  # top half bright, bottom half black
    args = {"mean": [0.0], "std": [1.0], "input_size": (8, 8)}
    mean = pooled_scores(index, image, "relu", "mean", **args)
    peak = pooled_scores(index, image, "relu", "max", **args)
    assert mean[0].tolist() == pytest.approx([0.375, 0.625, 0.75])
    assert peak[0].tolist() == pytest.approx([0.75, 1.0, 1.5])
    # Normalised as the model's input is: (x - 0.5) / 0.25 doubles the bright pixels' 0.25.
    normalised = pooled_scores(
        index, image, "relu", "max", **{**args, "mean": [0.5], "std": [0.25]}
    )
    assert normalised[0, 0].item() == pytest.approx(1.0)
    assert model.training  # left as found


def test_pooled_scores_resize_a_larger_pattern_to_the_input() -> None:
    index = layer_index(OneByOne(), (1, 8, 8))
    flat = torch.full((2, 1, 32, 32), 0.4)
    scores = pooled_scores(index, flat, "relu", "mean", mean=[0.0], std=[1.0], input_size=(8, 8))
    assert scores.shape == (2, 3)
    assert scores[:, 0].tolist() == pytest.approx([0.4, 0.4])


@pytest.mark.parametrize(
    ("score", "top", "images", "rank"),
    [
        (9.0, [5.0, 4.0, 3.0], 100, 1),  # above all
        (4.5, [5.0, 4.0, 3.0], 100, 2),
        (4.0, [5.0, 4.0, 3.0], 100, 2),  # a tie ranks with the image it equals
        (3.0, [5.0, 4.0, 3.0], 100, 3),  # at the lowest kept: none unseen is higher
        (2.9, [5.0, 4.0, 3.0], 100, None),  # below the top-3 of 100: only rank > 3 is known
        (2.9, [5.0, 4.0, 3.0], 3, 4),  # every image kept: exact, last
        (0.0, [], 0, 1),
    ],
)
def test_rank_among_the_stored_top_k(
    score: float, top: list[float], images: int, rank: int | None
) -> None:
    assert rank_among(score, top, images) == rank
