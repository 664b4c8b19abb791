"""Objectives: unit counts, combination rules, validation and values computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError, LayerShapeError, UnknownLayerError
from cnnviz.layers import LayerIndex
from cnnviz.optvis import objectives as o


def _batch(
    acts: dict[str, torch.Tensor], units: list[int], groups: list[int] | None = None
) -> o.Batch:
    n = len(units)
    images = torch.full((n, 3, 4, 4), 0.5)
    return o.Batch(
        images=images,
        layers=acts,
        units=torch.tensor(units),
        groups=torch.tensor(groups if groups is not None else units),
    )


def _conv_acts() -> torch.Tensor:
    """``(2, 3, 2, 2)``: row r, channel c, position (y, x) holds 100r + 10c + 2y + x."""
    r = torch.arange(2).view(2, 1, 1, 1) * 100.0
    c = torch.arange(3).view(1, 3, 1, 1) * 10.0
    y = torch.arange(2).view(1, 1, 2, 1) * 2.0
    x = torch.arange(2).view(1, 1, 1, 2) * 1.0
    return r + c + y + x


def test_channel_takes_each_rows_own_channel_mean() -> None:
    objective = o.channel("conv", [2, 0])
    assert objective.n_units == 2 and objective.layers == ("conv",)
    own, total = objective(_batch({"conv": _conv_acts()}, units=[0, 1]))
    # row 0 → channel 2: 20 + mean(0, 1, 2, 3); row 1 → channel 0: 100 + 1.5
    assert own.tolist() == [21.5, 101.5]
    assert torch.equal(own, total)


def test_neuron_at_the_centre_or_a_given_position() -> None:
    acts = {"conv": _conv_acts()}
    centre, _ = o.neuron("conv", 1)(_batch(acts, units=[0, 0]))
    assert centre.tolist() == [13.0, 113.0]  # (y, x) = (1, 1) for a 2×2 map
    corner, _ = o.neuron("conv", [1, 2], y=0, x=1)(_batch(acts, units=[0, 1]))
    assert corner.tolist() == [11.0, 121.0]


def test_layer_direction_and_class_logit() -> None:
    acts = {"conv": torch.ones((1, 3, 2, 2)) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)}
    energy, _ = o.layer("conv")(_batch(acts, units=[0]))
    assert energy.item() == pytest.approx((1 + 4 + 9) / 3)
    dots, _ = o.direction("conv", [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])(_batch(acts, units=[1]))
    assert dots.tolist() == [2.0]
    logits = {"fc": torch.tensor([[0.5, -1.0, 3.0], [7.0, 8.0, 9.0]])}
    value, _ = o.class_logit("fc", [2, 0])(_batch(logits, units=[0, 1]))
    assert value.tolist() == [3.0, 7.0]


def test_weighted_sums_broadcast_single_unit_terms() -> None:
    acts = {"conv": _conv_acts()}
    objective = 2 * o.channel("conv", [0, 1]) - 0.5 * o.neuron("conv", 2, 0, 0) + 0
    assert objective.n_units == 2
    own, _ = objective(_batch(acts, units=[0, 1]))
    assert own.tolist() == [2 * 1.5 - 0.5 * 20, 2 * 111.5 - 0.5 * 120]
    assert sum([o.channel("conv", 0), o.channel("conv", 1)]).n_units == 1
    assert (o.channel("conv", [0, 1]) / 4).terms[0][0] == 0.25


def test_terms_with_different_unit_counts_do_not_add() -> None:
    with pytest.raises(InvalidArgumentError, match="2 and 3 units"):
        o.channel("a", [0, 1]) + o.channel("b", [0, 1, 2])


def test_penalties_are_signed_and_excluded_from_the_units_own_value() -> None:
    acts = {"conv": _conv_acts()}
    batch = _batch(acts, units=[0, 1])
    batch.images[1, :, :, :2] = 1.0  # row 1: half the image white, a vertical edge
    objective = o.channel("conv", [0, 0]) + o.l1(2.0, constant=0.5) + o.total_variation(1.0)
    own, total = objective(batch)
    assert own.tolist() == [1.5, 101.5]
    l1_row1 = 0.5 * 0.5  # half the pixels differ by 0.5
    tv_row1 = 0.5 * (1 / 3)  # one edge in every row of 3 horizontal differences, dy: none
    assert total.tolist() == pytest.approx([1.5, 101.5 - 2 * l1_row1 - tv_row1])
    with pytest.raises(InvalidArgumentError, match="add it"):
        o.channel("conv", 0) - o.l2(0.1)
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        o.l1(-1.0)


def test_diversity_pushes_apart_only_images_of_the_same_unit() -> None:
    torch.manual_seed(0)
    same = torch.rand((1, 4, 3, 3)).expand(2, -1, -1, -1)
    acts = {"conv": torch.cat([same, torch.rand((1, 4, 3, 3))])}
    objective = o.channel("conv", [1, 1, 2]) + o.diversity("conv", 10.0)
    assert objective.groups() == [0, 0, 1] and objective.couples_units
    own, total = objective(_batch(acts, units=[0, 1, 2], groups=objective.groups()))
    # Rows 0 and 1 are identical (cosine similarity 1, group of 2): -10 * 1 / 2 each.
    assert (total - own).tolist() == pytest.approx([-5.0, -5.0, 0.0])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.conv(x))))


@pytest.fixture(scope="module")
def index() -> LayerIndex:
    return LayerIndex(_Net(), (3, 8, 8), "net")


def test_validation_names_the_bad_value_and_the_valid_range(index: LayerIndex) -> None:
    o.channel("conv", [0, 3]).validate(index)
    o.neuron("conv", 0, y=7, x=0).validate(index)
    o.class_logit("fc", 4).validate(index)
    with pytest.raises(UnknownLayerError, match=r"'conv2'.*did you mean 'conv'"):
        o.channel("conv2", 0).validate(index)
    with pytest.raises(InvalidArgumentError, match=r"channel 4 .*'conv'.*0\.\.3"):
        o.channel("conv", [1, 4]).validate(index)
    with pytest.raises(InvalidArgumentError, match=r"y=8 .*0\.\.7"):
        o.neuron("conv", 0, y=8).validate(index)
    with pytest.raises(InvalidArgumentError, match="4 components"):
        o.direction("conv", [1.0, 2.0]).validate(index)
    with pytest.raises(LayerShapeError, match=r"\(K,\)"):
        o.class_logit("conv", 0).validate(index)
    with pytest.raises(LayerShapeError, match=r"\(C, H, W\)"):
        o.neuron("fc", 0).validate(index)
    with pytest.raises(InvalidArgumentError, match="at least one channel"):
        o.channel("conv", [])


def test_caricature_is_the_dot_product_times_the_floored_cosine_to_a_power() -> None:
    target = torch.tensor([1.0, 0.0]).view(2, 1, 1)  # an image's activations: (units, h, w)
    acts = torch.tensor([[3.0, 4.0], [-1.0, 0.0]]).view(2, 2, 1, 1)
    objective = o.caricature("conv", target, cossim_pow=2.0)
    assert objective.n_units == 1 and objective.layers == ("conv",)
    own, _ = objective(_batch({"conv": acts}, units=[0, 0]))
    # row 0: dot 3, cosine 3/5 → 3 · 0.6²; row 1: dot -1, cosine -1, floored to 0.1 → -1 · 0.1²
    assert own.tolist() == pytest.approx([3 * 0.36, -0.01])


def test_caricature_refuses_activations_of_another_shape(index: LayerIndex) -> None:
    with pytest.raises(InvalidArgumentError, match="needs its activations"):
        o.caricature("conv", torch.ones(5, 1, 1)).validate(index)
    with pytest.raises(InvalidArgumentError, match="non-zero"):
        o.caricature("conv", torch.zeros(2, 1, 1))
