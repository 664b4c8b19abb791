"""The dissection core: exact quantiles from merged top values, and IoU counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnviz.dissection import (
    IoUTally,
    MapCache,
    TopValues,
    count_ious,
    float32_below,
    iou,
    thresholds,
    top_values_needed,
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


def test_counts_from_cached_maps_and_merged_halves_equal_one_count() -> None:
    """Maps and masks read back from a MapCache count exactly as the tensors themselves, and
    two tallies merged equal one tally of both halves (integers: any cut, any order)."""
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn((8, 4, 5, 6), generator=generator).relu()
    masks = torch.randint(0, 3, (8, 20, 24), generator=generator, dtype=torch.uint8)
    t = np.quantile(maps.transpose(0, 1).reshape(4, -1).double().numpy(), 0.8, axis=1)
    whole = IoUTally(4, 2)
    whole.update(maps, masks, float32_below(t))
    with MapCache() as cache:
        cache.add({"a": maps[:3]}, masks[:3], 3)
        cache.add({}, masks[:0], 2)  # a batch of unreadable images
        cache.add({"a": maps[3:]}, masks[3:], 5)
        images: list[int] = []
        cached = count_ious(cache, {"a": t}, 2, on_batch=images.append)["a"]
    assert images == [3, 2, 5]
    halves = [IoUTally(4, 2), IoUTally(4, 2)]
    halves[1].update(maps[5:], masks[5:], float32_below(t))
    halves[0].update(maps[:5], masks[:5], float32_below(t))
    halves[1].merge(halves[0])
    for tally in (cached, halves[1]):
        assert torch.equal(tally.intersection, whole.intersection)
        assert torch.equal(tally.on, whole.on)
        assert torch.equal(tally.area, whole.area)
    assert whole.on.sum() > 0
