"""Image parameterizations: shapes, range, reproducible starts, 1/f spectrum."""

from __future__ import annotations

import pytest
import torch

from cnnviz.optvis.param import (
    FourierParam,
    PixelParam,
    make_param,
    spectral_high_frequency_ratio,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", ["fourier", "pixel"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(16, 16), (9, 12)])
def test_images_have_the_right_shape_and_stay_in_range(
    kind: str, channels: int, size: tuple[int, int]
) -> None:
    param = make_param(kind, channels, size, decorrelate=True, device=CPU)  # type: ignore[arg-type]
    raw = torch.stack([param.init(torch.Generator().manual_seed(i)) for i in range(2)])
    images = param.images(raw * 1000)  # far outside any sensible range: the sigmoid holds
    assert images.shape == (2, channels, *size)
    assert images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    start = param.images(raw)
    assert (start - 0.5).abs().max() < 0.05  # small noise around mid grey, as in Lucid


def test_init_comes_from_the_generator_only() -> None:
    param = FourierParam(3, (8, 8), decorrelate=True, device=CPU)
    torch.manual_seed(0)
    a = param.init(torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = param.init(torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, param.init(torch.Generator().manual_seed(6)))


def test_fourier_noise_is_smoother_than_pixel_noise() -> None:
    """Equal white noise in the parameters: 1/f amplitudes put a third of the energy above
    0.25 cycles/pixel (log-uniform power), white noise four fifths."""
    size = (32, 32)
    fourier = FourierParam(3, size, decorrelate=False, device=CPU, sd=1.0)
    pixel = PixelParam(3, size, decorrelate=False, device=CPU, sd=1.0)
    gen = torch.Generator().manual_seed(0)
    f = fourier._linear(torch.stack([fourier.init(gen) for _ in range(4)]))
    p = pixel._linear(torch.stack([pixel.init(gen) for _ in range(4)]))
    assert spectral_high_frequency_ratio(f).mean() < 0.5 * spectral_high_frequency_ratio(p).mean()


def test_spectral_ratio_of_known_signals() -> None:
    y = torch.arange(16, dtype=torch.float64).view(1, 1, 16, 1).expand(1, 1, 16, 16)
    slow = torch.cos(2 * torch.pi * y / 16)  # 1/16 cycles per pixel
    fast = torch.cos(torch.pi * y)  # Nyquist, 0.5 cycles per pixel
    assert spectral_high_frequency_ratio(slow).item() == pytest.approx(0.0, abs=1e-12)
    assert spectral_high_frequency_ratio(fast).item() == pytest.approx(1.0)


def test_decorrelation_mixes_colours_only_for_three_channels() -> None:
    raw = torch.zeros((1, 3, 4, 4))
    raw[:, 0] = 1.0  # first decorrelated channel: the luminance-like axis
    decorrelated = PixelParam(3, (4, 4), decorrelate=True, device=CPU).images(raw)
    assert (decorrelated[0, :, 0, 0] > 0.6).all()  # all three RGB channels brighten
    plain = PixelParam(3, (4, 4), decorrelate=False, device=CPU).images(raw)
    assert plain[0, 1:].eq(0.5).all()
    grey = PixelParam(1, (4, 4), decorrelate=True, device=CPU).images(raw[:, :1])
    assert grey.shape == (1, 1, 4, 4)
