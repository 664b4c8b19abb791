"""Faithfulness (RISE deletion and insertion): on a planted model whose right answer is known,
a good map beats a random one, and the core's AUCs equal the documented protocol computed here
independently, one image at a time in plain torch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from cnnviz.attribution import attribute, faithfulness, metric_images
from cnnviz.attribution.faithfulness import ranks
from cnnviz.errors import InvalidArgumentError
from tests.api.nets import Quadrant

SIZE = 16


def planted_image(seed: int = 0) -> torch.Tensor:
    """``(1, 1, 16, 16)``: the top-left quadrant white, the rest uniform noise in [0, 0.5]."""
    x = torch.rand((1, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(seed)) / 2
    x[..., : SIZE // 2, : SIZE // 2] = 1.0
    return x


def ideal_map() -> torch.Tensor:
    """``(1, 16, 16)``: 1 on the quadrant that makes the score, 0 elsewhere."""
    ideal = torch.zeros(1, SIZE, SIZE)
    ideal[:, : SIZE // 2, : SIZE // 2] = 1.0
    return ideal


def reference_curves(
    model: nn.Module, x: torch.Tensor, rank_by: torch.Tensor, target: int, steps: int
) -> dict[str, list[float]]:
    """The protocol of docs/attribution.md, written out plainly: one image per point."""
    flat = rank_by.abs().sum(dim=0).flatten() if rank_by.dim() == 3 else rank_by.flatten()
    # Descending, ties to the lower index: sort by (-value, index) in Python.
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    pixels = flat.numel()
    chunk = math.ceil(pixels / steps)
    blurred = TF.gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])  # reflect padding
    curves: dict[str, list[float]] = {"deletion": [], "insertion": []}
    for k in range(steps + 1):
        chosen = torch.tensor(order[: min(k * chunk, pixels)], dtype=torch.long)
        deleted = x.clone().flatten(2)
        deleted[:, :, chosen] = 0.0  # the normalised mean colour
        inserted = blurred.clone().flatten(2)
        inserted[:, :, chosen] = x.flatten(2)[:, :, chosen]
        for name, image in (("deletion", deleted), ("insertion", inserted)):
            with torch.no_grad():
                scores = model(image.view_as(x))
            curves[name].append(float(torch.softmax(scores, dim=1)[0, target]))
    return curves


def trapezoid(curve: list[float]) -> float:
    steps = len(curve) - 1
    return sum((a + b) / 2 for a, b in itertools.pairwise(curve)) / steps


def reference_random(
    model: nn.Module, x: torch.Tensor, target: int, steps: int, count: int, seed: int
) -> dict[str, float]:
    noise = torch.rand((count, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    aucs: dict[str, list[float]] = {"deletion": [], "insertion": []}
    for one in noise:
        for name, curve in reference_curves(model, x, one, target, steps).items():
            aucs[name].append(trapezoid(curve))
    return {name: sum(values) / len(values) for name, values in aucs.items()}


@pytest.fixture(scope="module")
def planted() -> tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    model, x = Quadrant(SIZE), planted_image()
    maps = {"ideal": ideal_map()}
    maps["saliency"] = attribute(model, x, "saliency", targets=[0]).maps
    maps["gradcam"] = attribute(model, x, "gradcam", targets=[0], layer="pool").maps
    return model, x, maps


def test_a_map_of_what_the_model_uses_beats_random_maps(
    planted: tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    model, x, maps = planted
    # Saliency of the planted model is the quadrant (|d score / d pixel| = 1/4 there, 0 else).
    assert torch.equal(maps["saliency"] > 0, ideal_map() > 0)
    scores = {
        name: faithfulness(model, x, found, [0], random_maps=8)[0] for name, found in maps.items()
    }
    random = scores["ideal"]
    assert random.random_deletion_auc is not None and random.random_insertion_auc is not None
    for name in ("saliency", "gradcam"):
        found = scores[name]
        assert found.deletion_auc is not None and found.insertion_auc is not None
        assert scores["ideal"].deletion_auc <= found.deletion_auc + 1e-6  # type: ignore[operator]
        assert found.deletion_auc < random.random_deletion_auc - 0.05
        assert scores["ideal"].insertion_auc >= found.insertion_auc - 1e-6  # type: ignore[operator]
        assert found.insertion_auc > random.random_insertion_auc + 0.05
    # The random reference does not depend on the map it is reported with.
    assert scores["gradcam"].random_deletion_auc == random.random_deletion_auc


@pytest.mark.parametrize("name", ["ideal", "saliency", "gradcam"])
def test_the_aucs_equal_the_protocol_computed_independently(
    planted: tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]], name: str
) -> None:
    model, x, maps = planted
    steps, count, seed = 10, 3, 7  # 256 pixels in chunks of 26: the last chunk is short
    [found] = faithfulness(model, x, maps[name], [0], steps=steps, random_maps=count, seed=seed)
    curves = reference_curves(model, x, maps[name][0], 0, steps)
    assert found.deletion_curve == pytest.approx(curves["deletion"], abs=1e-5)
    assert found.insertion_curve == pytest.approx(curves["insertion"], abs=1e-5)
    assert found.deletion_auc == pytest.approx(trapezoid(curves["deletion"]), abs=1e-4)
    assert found.insertion_auc == pytest.approx(trapezoid(curves["insertion"]), abs=1e-4)
    random = reference_random(model, x, 0, steps, count, seed)
    assert found.random_deletion_auc == pytest.approx(random["deletion"], abs=1e-4)
    assert found.random_insertion_auc == pytest.approx(random["insertion"], abs=1e-4)


def test_batching_changes_nothing_and_the_model_is_left_as_found(
    planted: tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    model, x, maps = planted
    model.train()
    seen: list[int] = []
    two = torch.cat([maps["gradcam"], maps["saliency"]])
    whole = faithfulness(model, x, two, [0, 1], steps=8, random_maps=2)
    small = faithfulness(
        model, x, two, [0, 1], steps=8, random_maps=2, max_batch=7, on_batch=seen.append
    )
    assert model.training
    model.eval()
    assert sum(seen) == metric_images(["deletion", "insertion"], 8, 2, 2) == 2 * 9 * 4
    assert max(seen) == 7
    for a, b in zip(whole, small, strict=True):
        assert a.deletion_curve == pytest.approx(b.deletion_curve, abs=1e-6)
        assert a.insertion_auc == pytest.approx(b.insertion_auc, abs=1e-6)
    # Target 1 is the constant logit's class: its probability rises as the quadrant goes.
    assert whole[1].deletion_curve is not None and whole[1].deletion_curve[-1] > 0.9


def test_only_the_metrics_asked_for_are_computed() -> None:
    model, x = Quadrant(SIZE), planted_image()
    seen: list[int] = []
    [found] = faithfulness(
        model,
        x,
        ideal_map(),
        [0],
        metrics=["deletion"],
        steps=4,
        random_maps=0,
        on_batch=seen.append,
    )
    assert sum(seen) == 5
    assert found.insertion_auc is None and found.insertion_curve is None
    assert found.random_deletion_auc is None and found.deletion_auc is not None


def test_ranking_is_stable_descending_and_sums_channels() -> None:
    flat = torch.tensor([[[0.5, 2.0], [0.5, -3.0]]])  # (1, 2, 2)
    assert ranks(flat).tolist() == [[1, 0, 2, 3]]  # ties (0.5) keep their flat order
    channels = torch.tensor([[[[1.0, 0.0]], [[-2.0, 2.5]]]])  # (1, 2, 1, 2): |sums| 3, 2.5
    assert ranks(channels).tolist() == [[0, 1]]


def test_bad_calls_are_clear_errors() -> None:
    x = planted_image()

    class One(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).sum(dim=1, keepdim=True)

    with pytest.raises(InvalidArgumentError, match="softmax is constant"):
        faithfulness(One(), x, ideal_map(), [0])
    with pytest.raises(InvalidArgumentError, match="'ablation'"):
        faithfulness(Quadrant(SIZE), x, ideal_map(), [0], metrics=["ablation"])
    with pytest.raises(InvalidArgumentError, match="one per target"):
        faithfulness(Quadrant(SIZE), x, ideal_map(), [0, 1])
    with pytest.raises(InvalidArgumentError, match="at least 6 pixels"):
        faithfulness(Quadrant(4), torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), [0])
