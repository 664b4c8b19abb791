"""Differentiable random transforms, drawn independently for every image of a batch.

Optimizing an image to be recognised under small random shifts, scalings and rotations keeps
it from exploiting the exact pixel grid (Mordvintsev et al. 2015; Olah et al. 2017). Each
transform separates *drawing* its random parameters from *applying* them:

- :meth:`Transform.draw` takes one unit's :class:`torch.Generator` and returns the parameters
  of every step at once, ``(steps, n_params)`` float32 on CPU. Drawing per unit, up front,
  makes a unit's transforms independent of which other units share its batch (chunking does
  not change results) and costs one generator call per unit instead of one per step.
- ``transform(images, params)`` applies them: ``images`` ``(n, C, H, W)``, ``params``
  ``(n, n_params)`` on the images' device, one row per image. Every operation is
  differentiable with respect to ``images``.

:class:`Compose` chains transforms and fuses consecutive affine ones (scale, rotate) into a
single resampling, so the image is interpolated once instead of once per transform; a chain
that begins with a pad, as the standard set does, also takes the pad and the jitters into
that one resampling (see :func:`_pad_window`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Compose",
    "Jitter",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "Resize",
    "Transform",
    "standard_transforms",
]


class Transform(ABC):
    """One differentiable transform with per-image random parameters."""

    n_params: int = 0

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        """Parameters for ``steps`` steps of one image: ``(steps, n_params)`` float32, CPU."""
        return torch.empty((steps, self.n_params))

    @abstractmethod
    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Transform ``images`` ``(n, C, H, W)`` with ``params`` ``(n, n_params)``."""


class Pad(Transform):
    """Pad every side by ``width`` pixels of a constant ``value`` (0.5: mid grey)."""

    def __init__(self, width: int, value: float = 0.5) -> None:
        self.width = width
        self.value = value

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        w = self.width
        return F.pad(images, (w, w, w, w), mode="constant", value=self.value)

    def __repr__(self) -> str:
        return f"Pad({self.width}, {self.value})"


class Jitter(Transform):
    """Crop ``(H - d, W - d)`` at a random integer offset in ``[0, d]`` on each axis."""

    n_params = 2

    def __init__(self, d: int) -> None:
        if d < 1:
            raise ValueError(f"jitter must be at least 1 pixel, not {d}")
        self.d = d

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        return torch.randint(0, self.d + 1, (steps, 2), generator=generator).to(torch.float32)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        out_h, out_w = h - self.d, w - self.d
        offsets = params.to(torch.long)
        # Two gathers (rows, then columns): an exact per-image crop, no interpolation.
        rows = offsets[:, 0, None] + torch.arange(out_h, device=images.device)
        cols = offsets[:, 1, None] + torch.arange(out_w, device=images.device)
        images = images.gather(2, rows[:, None, :, None].expand(n, c, out_h, w))
        return images.gather(3, cols[:, None, None, :].expand(n, c, out_h, out_w))

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


class _Affine(Transform):
    """A transform that resamples the image through a per-image affine map of the plane."""

    @abstractmethod
    def linear(self, params: torch.Tensor) -> torch.Tensor:
        """``(n, 2, 2)``: the map about the centre, output pixel position (centred, in
        pixels) → input position."""

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 3)``: :meth:`linear` in homogeneous coordinates."""
        matrix = torch.zeros((params.shape[0], 3, 3), dtype=params.dtype, device=params.device)
        matrix[:, :2, :2] = self.linear(params)
        matrix[:, 2, 2] = 1.0
        return matrix

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return _resample(images, self.matrix(params.to(images.dtype)))


def _resample(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of ``images`` ``(n, C, H, W)`` through ``matrix`` ``(n, 3, 3)``.

    ``matrix`` works in pixels about the image centre; it is conjugated into
    ``grid_sample``'s normalised coordinates so rotations stay rotations on non-square images.
    Points outside the image take the nearest border pixel (the padding, in the standard set).
    """
    height, width = images.shape[-2:]
    half = torch.tensor([width / 2, height / 2, 1.0], dtype=images.dtype, device=images.device)
    theta = (matrix * half[None, None, :]) / half[None, :, None]
    grid = F.affine_grid(theta[:, :2, :], list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomScale(_Affine):
    """Zoom about the centre by a factor drawn uniformly from ``[low, high]`` (> 1 enlarges)."""

    n_params = 1

    def __init__(self, low: float = 0.9, high: float = 1.1) -> None:
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, not [{low}, {high}]")
        self.low = low
        self.high = high

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        return torch.empty((steps, 1)).uniform_(self.low, self.high, generator=generator)

    def linear(self, params: torch.Tensor) -> torch.Tensor:
        inverse = 1.0 / params[:, 0]
        return inverse[:, None, None] * torch.eye(2, dtype=params.dtype, device=params.device)

    def __repr__(self) -> str:
        return f"RandomScale({self.low}, {self.high})"


class RandomRotate(_Affine):
    """Rotate about the centre by an angle drawn uniformly from ``[-degrees, degrees]``."""

    n_params = 1

    def __init__(self, degrees: float = 10.0) -> None:
        self.degrees = degrees

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        return torch.empty((steps, 1)).uniform_(-self.degrees, self.degrees, generator=generator)

    def linear(self, params: torch.Tensor) -> torch.Tensor:
        angle = params[:, 0] * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)

    def __repr__(self) -> str:
        return f"RandomRotate({self.degrees})"


class Resize(Transform):
    """Bilinear resize to ``size`` ``(H, W)`` (antialiased when shrinking); no-op if equal."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.size:
            return images
        shrinking = images.shape[-2] > self.size[0] or images.shape[-1] > self.size[1]
        return F.interpolate(
            images, size=self.size, mode="bilinear", align_corners=False, antialias=shrinking
        )

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class Compose(Transform):
    """Apply ``transforms`` in order; their parameters are concatenated in that order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)
        self.n_params = sum(t.n_params for t in self.transforms)

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        parts = [t.draw(generator, steps) for t in self.transforms]
        return torch.cat(parts, dim=1) if parts else torch.empty((steps, 0))

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        start = 0
        pending: torch.Tensor | None = None  # product of consecutive affine maps not yet applied
        transforms = self.transforms
        if _fusable(transforms):
            # The standard set's pad, jitters, scale and rotation as one resampling.
            count = _fused_length(transforms)
            start = sum(t.n_params for t in transforms[:count])
            images = _pad_window(images, transforms[:count], params[:, :start])
            transforms = transforms[count:]
        for transform in transforms:
            own = params[:, start : start + transform.n_params].to(images.dtype)
            start += transform.n_params
            if isinstance(transform, _Affine):
                # Output → input maps compose right to left: the first transform's map is
                # applied last to the output position.
                matrix = transform.matrix(own)
                pending = matrix if pending is None else pending @ matrix
                continue
            if pending is not None:
                images = _resample(images, pending)
                pending = None
            images = transform(images, own)
        return images if pending is None else _resample(images, pending)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _fused_length(transforms: Sequence[Transform]) -> int:
    """How many transforms from the first one form a pad, then jitters and affine maps."""
    count = 1
    while count < len(transforms) and isinstance(transforms[count], (Jitter, _Affine)):
        count += 1
    return count


def _fusable(transforms: Sequence[Transform]) -> bool:
    """Whether ``transforms`` begins with a :class:`Pad` followed by jitters and affine maps,
    at least one of them affine (a pad and crops alone stay exact copies of pixels)."""
    if not transforms or not isinstance(transforms[0], Pad):
        return False
    return any(isinstance(t, _Affine) for t in transforms[1 : _fused_length(transforms)])


def _pad_window(
    images: torch.Tensor, transforms: Sequence[Transform], params: torch.Tensor
) -> torch.Tensor:
    """A pad, then jitters and affine maps (see :func:`_fusable`), as one bilinear resampling
    of ``images`` ``(n, C, H, W)`` with ``params`` ``(n, k)`` their parameters in order.

    Every one of them maps an output position to an input position affinely, so the chain is
    one map per image: crops are shifts of the window, the pad is the value outside the image.
    With one affine resampling in the chain (the standard set) this is the same bilinear
    interpolation as applying them one by one (where a jitter crops the whole pad away, on
    images under about 40 px, one by one would repeat the image's edge past it; here it is
    the pad's value), without materializing the padded and cropped images (their copies and
    gathers, and the scatters of their backward, cost as much as the resampling itself on
    CPU). Positions are in pixels, ``(x, y, 1)``, pixel centres at ``i + 0.5``.
    """
    pad = transforms[0]
    assert isinstance(pad, Pad)
    n = images.shape[0]
    dtype, device = images.dtype, images.device
    height, width = images.shape[-2] + 2 * pad.width, images.shape[-1] + 2 * pad.width
    # Output of the whole chain → input image, composed from the image's side outwards.
    chain = torch.eye(3, dtype=dtype, device=device).repeat(n, 1, 1)
    chain[:, 0, 2] = -pad.width
    chain[:, 1, 2] = -pad.width
    start = 0
    for transform in transforms[1:]:
        own = params[:, start : start + transform.n_params].to(dtype)
        start += transform.n_params
        step = torch.eye(3, dtype=dtype, device=device).repeat(n, 1, 1)
        if isinstance(transform, Jitter):  # crop at (dy, dx): output (x, y) is (x + dx, y + dy)
            step[:, 0, 2] = own[:, 1]
            step[:, 1, 2] = own[:, 0]
            height, width = height - transform.d, width - transform.d
        else:  # an affine map about the centre, in pixels, the size kept
            assert isinstance(transform, _Affine)
            centre = torch.tensor([width / 2, height / 2], dtype=dtype, device=device)
            matrix = transform.matrix(own)
            step[:, :2, :2] = matrix[:, :2, :2]
            step[:, :2, 2] = centre - (matrix[:, :2, :2] @ centre)
        chain = chain @ step
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer pixel edges.
    to_input = torch.tensor(
        [[2 / images.shape[-1], 0, -1], [0, 2 / images.shape[-2], -1], [0, 0, 1]],
        dtype=dtype,
        device=device,
    )
    from_output = torch.tensor(
        [[width / 2, 0, width / 2], [0, height / 2, height / 2], [0, 0, 1]],
        dtype=dtype,
        device=device,
    )
    theta = (to_input @ chain @ from_output)[:, :2, :]
    grid = F.affine_grid(theta, [n, images.shape[1], height, width], align_corners=False)
    # Zeros outside an image shifted by the pad value: the pad value outside the image.
    shifted = F.grid_sample(
        images - pad.value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return shifted + pad.value


def standard_transforms(image_size: tuple[int, int], output_size: tuple[int, int]) -> Compose:
    """Lucid's standard robustness set, scaled to the image, then a resize to the model's input.

    For a 224-pixel image: pad 12 (grey), jitter 8, scale in [0.9, 1.1], rotate ±10°, jitter 4
    — Lucid's ``standard_transforms``. Pixel amounts scale with the image so a 64-pixel image
    is moved as much, relative to its size, as a 224-pixel one.
    """
    unit = min(image_size) / 224.0
    return Compose(
        [
            Pad(max(1, round(12 * unit)), 0.5),
            Jitter(max(1, round(8 * unit))),
            RandomScale(0.9, 1.1),
            RandomRotate(10.0),
            Jitter(max(1, round(4 * unit))),
            Resize(output_size),
        ]
    )
