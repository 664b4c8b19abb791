"""The dissection core: exact quantiles from merged top values, and IoU counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnviz.dissection import (
    IoUTally,
    TopValues,
    float32_below,
    iou,
    thresholds,
    top_values_needed,
    unit_maps,
)


@pytest.mark.parametrize("quantile", [0.005, 0.01, 0.2, 0.37])
@pytest.mark.parametrize("n", [1, 2, 7, 400, 5001])
def test_thresholds_equal_numpy_quantile_whatever_the_split(n: int, quantile: float) -> None:
    generator = torch.Generator().manual_seed(n)
    values = torch.randn((3, n), generator=generator)
    values[1] = values[1].round()  # ties
    m = top_values_needed(n, quantile)
    cuts = sorted({0, n, *torch.randint(0, n + 1, (3,), generator=generator).tolist()})
    parts = []
    for a, b in itertools.pairwise(cuts):
        part = TopValues(3, m)
        part.update(values[:, a:b].reshape(3, 1, 1, b - a).transpose(0, 1))
        parts.append(TopValues.from_json(part.to_json()))
    merged = parts[-1]
    for part in reversed(parts[:-1]):  # any order: the merge is a top-m of a union
        merged.merge(part)
    assert merged.count == n
    expected = np.quantile(values.double().numpy(), 1 - quantile, axis=1)
    np.testing.assert_array_equal(thresholds(merged, quantile), expected)


def test_float32_below_keeps_the_comparison_with_a_float64_threshold() -> None:
    t = np.array([0.1, 1.0, -0.3, 2.0 / 3.0])
    below = float32_below(t)
    x = torch.tensor([0.1, 1.0, -0.3, 2.0 / 3.0]).float()
    for nudge in (-1, 0, 1):
        xs = torch.from_numpy(np.nextafter(x.numpy(), np.float32(nudge * np.inf)))
        if nudge == 0:
            xs = x
        assert torch.equal(xs > below, torch.from_numpy(xs.double().numpy() > t))


def test_iou_counts_equal_a_dense_count_of_every_upsampled_pixel() -> None:
    """Pairs whose maximum is not above T are never upsampled: the counts stay exact."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn((6, 5, 7, 9), generator=generator).relu()
    masks = torch.randint(0, 4, (6, 30, 40), generator=generator, dtype=torch.long)
    t = np.quantile(maps.transpose(0, 1).reshape(5, -1).double().numpy(), 0.9, axis=1)
    tally = IoUTally(5, 3)
    tally.update(maps[:4], masks[:4], float32_below(t))
    tally.update(maps[4:], masks[4:], float32_below(t))
    up = F.interpolate(maps, size=(30, 40), mode="bilinear", align_corners=False)
    on = torch.from_numpy(up.double().numpy() > t[None, :, None, None])  # (N, C, H, W)
    assert torch.equal(tally.on, on.sum(dim=(0, 2, 3)))
    for k in range(4):
        assert torch.equal(
            tally.intersection[:, k], (on & (masks[:, None] == k)).sum(dim=(0, 2, 3))
        )
    assert torch.equal(tally.area, torch.bincount(masks.flatten(), minlength=4))
    inter = tally.intersection[:, 1:].double()
    expected = inter / (tally.on[:, None] + tally.area[None, 1:] - inter)
    assert torch.allclose(iou(tally), expected)


def test_unit_maps_give_every_layer_a_spatial_map() -> None:
    assert unit_maps(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 4, 5)
    assert unit_maps(torch.zeros(2, 3, 4)).shape == (2, 3, 1, 4)
    assert unit_maps(torch.zeros(2, 3)).shape == (2, 3, 1, 1)
    with pytest.raises(ValueError, match="cannot dissect"):
        unit_maps(torch.zeros(2))
