"""Image parameterizations: how an image in ``[0, 1]`` is made from the numbers optimized.

A parameterization holds no learnable state itself: it draws one unit's raw parameters from
an explicit :class:`torch.Generator` (:meth:`ImageParam.init`) and turns a stack of them into
images (:meth:`ImageParam.images`). The render loop owns the stacked tensor and its optimizer,
so a batch can be split into chunks without changing any unit's starting point.

As in Lucid (Olah et al. 2017), the Fourier parameterization scales each frequency by ``1/f``,
so Adam's per-parameter steps turn into image changes that favour low frequencies, and
decorrelated colour moves along the principal axes of natural-image colour. A sigmoid keeps
every pixel in ``(0, 1)`` whatever the parameters are.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

import torch

__all__ = [
    "COLOR_CORRELATION_SQRT",
    "FourierParam",
    "ImageParam",
    "PixelParam",
    "make_param",
    "spectral_high_frequency_ratio",
]

# Square root of the colour covariance of ImageNet pixels (Lucid's ``color_correlation_svd_sqrt``):
# multiplying decorrelated channels by it gives RGB with natural colour correlations.
COLOR_CORRELATION_SQRT: tuple[tuple[float, float, float], ...] = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)
# Lucid divides the Fourier image by 4: a smaller initial contrast after the sigmoid.
_FOURIER_DAMPING = 4.0


def _color_matrix(device: torch.device) -> torch.Tensor:
    """``(3, 3)`` float32: decorrelated → RGB, columns scaled so the largest has norm 1."""
    matrix = torch.tensor(COLOR_CORRELATION_SQRT, dtype=torch.float32)
    matrix = matrix / matrix.norm(dim=0).max()
    return matrix.to(device)


@dataclass(eq=False)
class ImageParam(ABC):
    """One way of making images ``(n, C, H, W)`` in ``[0, 1]`` from raw parameters.

    ``channels`` is 1 or 3 (decorrelation applies to 3 only); ``size`` is ``(H, W)``.
    """

    channels: int
    size: tuple[int, int]
    _: KW_ONLY
    decorrelate: bool
    device: torch.device
    sd: float = 0.01

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        use_color = self.decorrelate and self.channels == 3
        self._color = _color_matrix(self.device) if use_color else None

    @property
    @abstractmethod
    def raw_shape(self) -> tuple[int, ...]:
        """Shape of one unit's raw parameters."""

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """One unit's starting parameters: ``raw_shape`` float32 on CPU, ``N(0, sd²)``.

        Drawn on CPU from ``generator`` so a seed gives the same start on every device.
        """
        return torch.randn(self.raw_shape, generator=generator) * self.sd

    @abstractmethod
    def _linear(self, raw: torch.Tensor) -> torch.Tensor:
        """``(n, *raw_shape)`` → ``(n, C, H, W)`` unbounded, before colour and sigmoid."""

    def images(self, raw: torch.Tensor) -> torch.Tensor:
        """``(n, *raw_shape)`` float32 → ``(n, C, H, W)`` float32 in ``(0, 1)``, differentiable."""
        image = self._linear(raw)
        if self._color is not None:
            # A matmul over the flattened pixels: the same numbers as
            # einsum("nchw,dc->ndhw"), which runs as a slow batched matmul (a third of the
            # cost of the whole parameterization on CPU), and a contiguous result.
            image = torch.matmul(self._color, image.flatten(2)).view(image.shape)
        return torch.sigmoid(image)


@dataclass(eq=False)
class PixelParam(ImageParam):
    """Every pixel (of each decorrelated channel) is a parameter."""

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)

    def _linear(self, raw: torch.Tensor) -> torch.Tensor:
        return raw


@dataclass(eq=False)
class FourierParam(ImageParam):
    """The real FFT coefficients of each channel are the parameters, scaled by ``1/f^decay``.

    Raw parameters are ``(C, H, W // 2 + 1, 2)``: real and imaginary parts of the half
    spectrum. The inverse FFT is orthonormal, so the scale does not depend on the image size.
    """

    decay_power: float = field(default=1.0, kw_only=True)  # keyword-only, as the base's

    def __post_init__(self) -> None:
        super().__post_init__()
        height, width = self.size
        fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        # The DC term would be infinite; Lucid clamps every frequency to the lowest non-zero one.
        scale = 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** self.decay_power
        self._scale = scale.to(torch.float32).to(self.device)[None, None, :, :, None]

    @property
    def raw_shape(self) -> tuple[int, ...]:
        height, width = self.size
        return (self.channels, height, width // 2 + 1, 2)

    def _linear(self, raw: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex((raw * self._scale).contiguous())
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return image / _FOURIER_DAMPING


def make_param(
    kind: Literal["fourier", "pixel"],
    channels: int,
    size: tuple[int, int],
    *,
    decorrelate: bool,
    device: torch.device,
) -> ImageParam:
    """The parameterization named ``kind`` for images of ``channels`` × ``size``."""
    if kind == "fourier":
        return FourierParam(channels, size, decorrelate=decorrelate, device=device)
    if kind == "pixel":
        return PixelParam(channels, size, decorrelate=decorrelate, device=device)
    raise ValueError(f"unknown parameterization {kind!r}; choose 'fourier' or 'pixel'")


def spectral_high_frequency_ratio(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share of the (mean-removed) spectral energy above ``cutoff`` cycles/pixel, per image.

    ``images`` ``(n, C, H, W)`` → ``(n,)`` float in ``[0, 1]``. A measure of high-frequency
    noise: readable patterns have little energy near the Nyquist frequency (0.5).
    """
    x = images.to(torch.float64)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(dim=1)
    height, width = images.shape[-2:]
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    high = (torch.sqrt(fx * fx + fy * fy) > cutoff).to(power.device)
    total = power.flatten(1).sum(1).clamp_min(math.ulp(1.0))
    return (power * high).flatten(1).sum(1) / total
