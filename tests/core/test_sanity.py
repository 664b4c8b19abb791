"""Cascading randomization (Adebayo et al. 2018) on planted nets: a map that is the model's
weights passes, a map that no weight can change fails, and the model is left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.attribution.sanity import cascading_randomization, randomizable, spearman

SIZE = 8


class Weighted(nn.Module):
    """Two scores linear in the pixels: saliency is ``|W_k|``, all learned."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(SIZE * SIZE, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Scaled(nn.Module):
    """Two scores ``s_k · sum(x²)`` scaled by learned scalars: saliency is ``|2 s_k x|``,
    whose ranking no weight changes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.scale.weight.copy_(torch.tensor([[2.0], [-1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x.pow(2).flatten(1).sum(dim=1, keepdim=True))


def images() -> torch.Tensor:
    return torch.rand((3, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) + 0.1


def test_spearman_with_ties_and_constants() -> None:
    assert spearman(
        torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])
    ) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    # Ties at their average rank: ranks (1.5, 1.5, 3) and (1, 2, 3) correlate by 0.866.
    found = spearman(torch.tensor([5.0, 5, 9]), torch.tensor([1.0, 2, 3]))
    assert found == pytest.approx(0.8660254, abs=1e-6)
    assert spearman(torch.zeros(4), torch.arange(4.0)) == 0.0


def test_a_map_of_the_weights_passes_and_one_no_weight_changes_fails() -> None:
    weighted = Weighted()
    before = {k: v.clone() for k, v in weighted.state_dict().items()}
    [passed] = cascading_randomization(weighted, images(), ["saliency"])
    assert [name for name, _ in passed.correlations] == ["fc"]
    assert passed.passes and abs(passed.correlations[-1][1]) < 0.5
    assert all(torch.equal(before[k], v) for k, v in weighted.state_dict().items())
    [failed] = cascading_randomization(Scaled(), images(), ["saliency"])
    assert failed.correlations[-1][1] == pytest.approx(1.0)
    assert not failed.passes


def test_stages_go_from_the_output_down_and_are_seeded() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
    assert randomizable(net) == ["0", "3"]
    seen: list[tuple[int, int]] = []
    first = cascading_randomization(
        net,
        images(),
        ["saliency", "gradcam"],
        layer="0",
        seed=4,
        on_stage=lambda *a: seen.append(a),
    )
    assert seen == [(1, 2), (2, 2)]
    assert [name for name, _ in first[0].correlations] == ["3", "0"]
    again = cascading_randomization(net, images(), ["saliency", "gradcam"], layer="0", seed=4)
    assert [r.correlations for r in first] == [r.correlations for r in again]
