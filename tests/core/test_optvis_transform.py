"""Random transforms: differentiable (gradcheck in double), per-image, reproducible."""

from __future__ import annotations

import pytest
import torch

from cnnviz.optvis.transform import (
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    Resize,
    Transform,
    standard_transforms,
)


def _params(transform: Transform, n: int, seed: int = 0) -> torch.Tensor:
    """``(n, n_params)``: step 0 of n independently seeded images."""
    rows = [transform.draw(torch.Generator().manual_seed(seed + i), 1)[0] for i in range(n)]
    return torch.stack(rows).to(torch.float64)


@pytest.mark.parametrize(
    "transform",
    [
        Pad(2, 0.5),
        Jitter(2),
        RandomScale(0.8, 1.2),
        RandomRotate(15.0),
        Resize((5, 7)),
        Resize((11, 9)),
        Compose([Pad(2), Jitter(2), RandomScale(), RandomRotate(), Jitter(1), Resize((6, 6))]),
    ],
    ids=repr,
)
def test_transforms_pass_gradcheck_in_double(transform: Transform) -> None:
    images = torch.rand((2, 3, 8, 8), dtype=torch.float64, requires_grad=True)
    params = _params(transform, 2)
    assert torch.autograd.gradcheck(lambda x: transform(x, params), (images,))


def test_jitter_is_an_exact_per_image_crop() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    params = torch.tensor([[0.0, 2.0], [2.0, 1.0]])
    out = Jitter(2)(images, params)
    assert out.shape == (2, 1, 4, 4)
    assert torch.equal(out[0], images[0, :, 0:4, 2:6])
    assert torch.equal(out[1], images[1, :, 2:6, 1:5])


def test_identity_parameters_leave_the_image_unchanged() -> None:
    images = torch.rand((2, 3, 9, 12))
    scale_one = torch.ones((2, 1))
    angle_zero = torch.zeros((2, 1))
    torch.testing.assert_close(RandomScale()(images, scale_one), images)
    torch.testing.assert_close(RandomRotate()(images, angle_zero), images)
    fused = Compose([RandomScale(), RandomRotate()])
    torch.testing.assert_close(fused(images, torch.cat([scale_one, angle_zero], 1)), images)


def test_rotation_by_90_degrees_rotates_the_pixel_grid() -> None:
    images = torch.rand((1, 1, 8, 8))
    out = RandomRotate(90.0)(images, torch.tensor([[90.0]]))
    expected = torch.rot90(images, k=1, dims=(2, 3))
    assert torch.allclose(out, expected, atol=1e-5) or torch.allclose(
        out, torch.rot90(images, k=-1, dims=(2, 3)), atol=1e-5
    )


def test_each_image_gets_its_own_draw_and_draws_are_reproducible() -> None:
    compose = standard_transforms((64, 64), (64, 64))
    first = compose.draw(torch.Generator().manual_seed(3), 10)
    again = compose.draw(torch.Generator().manual_seed(3), 10)
    other = compose.draw(torch.Generator().manual_seed(4), 10)
    assert first.shape == (10, compose.n_params)
    assert torch.equal(first, again) and not torch.equal(first, other)
    images = torch.rand((1, 3, 64, 64)).expand(2, -1, -1, -1)
    out = compose(images, torch.stack([first[0], other[0]]))
    assert out.shape == (2, 3, 64, 64)
    assert not torch.allclose(out[0], out[1])


def test_standard_set_scales_with_the_image_and_ends_at_the_model_input() -> None:
    small = standard_transforms((64, 64), (224, 224))
    large = standard_transforms((224, 224), (224, 224))
    assert repr(large.transforms[:2]) == "[Pad(12, 0.5), Jitter(8)]"
    assert repr(small.transforms[:2]) == "[Pad(3, 0.5), Jitter(2)]"
    images = torch.rand((3, 3, 64, 64))
    params = torch.stack([small.draw(torch.Generator().manual_seed(i), 1)[0] for i in range(3)])
    assert small(images, params).shape == (3, 3, 224, 224)


@pytest.mark.parametrize("side", [48, 64, 128])
def test_the_standard_set_resamples_once_as_its_steps_one_by_one_would(side: int) -> None:
    # Sides whose pad is wider than the first jitter: below about 40 px both are 1 px, and
    # one by one the resampling's border then repeats image pixels where fused it is grey.
    compose = standard_transforms((side, side), (side, side))
    pad, jitter1, scale, rotate, jitter2, resize = compose.transforms
    images = torch.rand((3, 3, side, side), dtype=torch.float64)
    params = _params(compose, 3)
    split = torch.split(params, [t.n_params for t in compose.transforms], dim=1)
    # One by one: a Compose that does not begin with a pad applies its steps as they come.
    x = pad(images, split[0])
    x = jitter1(x, split[1])
    x = Compose([scale, rotate])(x, torch.cat([split[2], split[3]], dim=1))
    x = resize(jitter2(x, split[4]), split[5])
    torch.testing.assert_close(compose(images, params), x, rtol=0, atol=1e-9)
