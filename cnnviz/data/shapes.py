"""The procedural ``shapes`` data set that the embedded default model is trained on.

Six filled shapes (one object on a background) and six textures (a two-colour pattern over
the whole image). Every image is drawn from a seed alone, so a data set is reproducible from
a number and never downloaded. Colours, sizes, positions, rotations, periods and phases are
random; the background is flat or carries a mild illumination gradient and pixel noise.

Angles of stripes are the direction the stripes run along, counter-clockwise from the x axis
as seen on screen: ``stripes_diagonal_45`` runs like ``/``, ``stripes_diagonal_135`` like
``\\``. Flips and 90° rotations change those labels, so they are not label-preserving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from cnnviz.errors import InvalidArgumentError

__all__ = ["CLASSES", "IMAGE_SIZE", "generate", "generate_with_masks", "sample_image"]

CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "stripes_horizontal",
    "stripes_vertical",
    "stripes_diagonal_45",
    "stripes_diagonal_135",
    "checkerboard",
    "dots",
)
IMAGE_SIZE: int = 64

_SHAPES = frozenset(CLASSES[:6])
_STRIPE_DEGREES = {
    "stripes_horizontal": 0.0,
    "stripes_vertical": 90.0,
    "stripes_diagonal_45": 45.0,
    "stripes_diagonal_135": 135.0,
}
# Shapes are rasterised at this multiple of the image size and box-filtered down: exact
# area coverage, so edges are anti-aliased the same way at every size and rotation.
_SUPERSAMPLE = 4
# Images rendered per chunk: bounds float32 scratch memory to ~50 MiB for any n.
_CHUNK = 1024
# Minimum luminance gap between foreground and background, so every image is legible.
_MIN_CONTRAST = 0.25
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _Params:
    """Everything that decides an image except its pixel noise; arrays of length n.

    ``size`` is the circumradius in pixels for a shape and the period in pixels for a
    texture. ``angle`` (radians) is the rotation of a shape, the direction of stripes and the
    rotation of a checkerboard or dot lattice. ``aux`` is the star's inner-radius ratio, the
    cross's arm-width ratio, the stripes' duty cycle or the dots' radius/period ratio.
    ``cx, cy`` is a shape's centre, or a texture's origin (hence its phase), in pixels.
    """

    labels: np.ndarray  # (n,) int64
    fg: np.ndarray  # (n, 3) float32 in [0, 1]
    bg: np.ndarray  # (n, 3) float32 in [0, 1]
    cx: np.ndarray  # (n,) float64
    cy: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    aux: np.ndarray
    gradient: np.ndarray  # (n,) illumination gradient amplitude, 0 for flat
    gradient_angle: np.ndarray
    noise: np.ndarray  # (n,) std of Gaussian pixel noise, 0 for none


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled images, fully determined by ``seed``.

    Returns images ``(n, 3, 64, 64) uint8`` and labels ``(n,) int64`` indexing
    :data:`CLASSES`. Classes are balanced (counts differ by at most one) and shuffled.
    """
    images, labels, _ = generate_with_masks(n, seed)
    return images, labels


def generate_with_masks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`generate`'s images and labels, and the foreground of each image.

    The masks are ``(n, 64, 64) float32`` in [0, 1]: the area of each pixel that the shape
    (or the texture's foreground colour) covers. The images equal :func:`generate`'s.
    """
    if n < 0:
        raise InvalidArgumentError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    params = _sample_params(n, rng)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, n))
        masks[chunk] = _masks(_take(params, chunk))
        images[chunk] = _render(_take(params, chunk), rng, masks[chunk])
    return torch.from_numpy(images), torch.from_numpy(params.labels), torch.from_numpy(masks)


def sample_image(name: str) -> Image.Image:
    """A clean, centred, canonical 64×64 RGB example of class ``name``; deterministic.

    An amber pattern on a dark blue background, upright, with no noise or gradient.
    Raises :class:`~cnnviz.errors.InvalidArgumentError` (a ``ValueError``) for an unknown
    name, listing the valid ones.
    """
    if name not in CLASSES:
        raise InvalidArgumentError(f"unknown sample {name!r}; choose one of: {', '.join(CLASSES)}")
    default_aux = {"star": 0.45, "cross": 0.3, "dots": 0.3}
    half = IMAGE_SIZE / 2
    params = _Params(
        labels=np.array([CLASSES.index(name)], dtype=np.int64),
        fg=np.array([[0.96, 0.78, 0.24]], dtype=np.float32),
        bg=np.array([[0.09, 0.11, 0.19]], dtype=np.float32),
        cx=np.array([half]),
        cy=np.array([half]),
        size=np.array([24.0 if name in _SHAPES else 12.0]),
        angle=np.array([np.deg2rad(_STRIPE_DEGREES.get(name, 0.0))]),
        aux=np.array([default_aux.get(name, 0.5)]),
        gradient=np.zeros(1),
        gradient_angle=np.zeros(1),
        noise=np.zeros(1),
    )
    pixels = _render(params, rng=None)[0].transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels))


def _sample_params(n: int, rng: np.random.Generator) -> _Params:
    """Draw every per-image parameter, vectorised over the batch."""
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    fg, bg = _sample_colours(n, rng)
    names = np.array(CLASSES)[labels]
    is_shape = np.isin(names, list(_SHAPES))
    u = rng.random((n, 7))

    # Shapes: circumradius 12..28 px, kept whole inside the frame, any rotation.
    radius = 12.0 + 16.0 * u[:, 0]
    span = IMAGE_SIZE - 2.0 * (radius + 1.0)
    shape_cx = radius + 1.0 + span * u[:, 1]
    shape_cy = radius + 1.0 + span * u[:, 2]

    # Textures: the origin anywhere (a random phase); period and angle per kind.
    period = np.select(
        [names == "checkerboard", names == "dots"],
        [10.0 + 14.0 * u[:, 0], 8.0 + 8.0 * u[:, 0]],
        default=6.0 + 10.0 * u[:, 0],
    )
    stripe_deg = np.array([_STRIPE_DEGREES.get(c, 0.0) for c in CLASSES])[labels]
    # ±7° keeps the four stripe classes >= 31° apart; ±10° keeps checkerboards upright.
    texture_deg = np.select(
        [names == "checkerboard", names == "dots"],
        [-10.0 + 20.0 * u[:, 3], 90.0 * u[:, 3]],
        default=stripe_deg - 7.0 + 14.0 * u[:, 3],
    )
    angle = np.where(is_shape, 2.0 * np.pi * u[:, 3], np.deg2rad(texture_deg))
    # A quarter upright / at the exact nominal angle: edges then align with the pixel grid,
    # crisp and unlike any jittered edge, as in the canonical samples served to clients.
    nominal_deg = np.where(names == "dots", 0.0, stripe_deg)
    angle = np.where(u[:, 6] < 0.25, np.where(is_shape, 0.0, np.deg2rad(nominal_deg)), angle)
    aux = np.select(
        [names == "star", names == "cross", names == "dots"],
        [0.38 + 0.17 * u[:, 4], 0.22 + 0.16 * u[:, 4], 0.18 + 0.14 * u[:, 4]],
        default=0.35 + 0.30 * u[:, 4],
    )

    # Backgrounds: about 40% flat, the rest with a mild gradient; noise likewise.
    g = rng.random((n, 4))
    return _Params(
        labels=labels,
        fg=fg,
        bg=bg,
        cx=np.where(is_shape, shape_cx, IMAGE_SIZE * u[:, 1]),
        cy=np.where(is_shape, shape_cy, IMAGE_SIZE * u[:, 2]),
        size=np.where(is_shape, radius, period),
        angle=angle,
        aux=aux,
        gradient=np.where(g[:, 0] < 0.4, 0.0, 0.12 * g[:, 1]),
        gradient_angle=2.0 * np.pi * g[:, 2],
        noise=np.where(g[:, 3] < 0.4, 0.0, 0.04 * u[:, 5]),
    )


def _sample_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform RGB pairs ``(n, 3) float32``, redrawn until their luminances differ enough."""
    fg = rng.random((n, 3), dtype=np.float32)
    bg = rng.random((n, 3), dtype=np.float32)
    bad = np.abs((fg - bg) @ _LUMA) < _MIN_CONTRAST
    while bad.any():
        k = int(bad.sum())
        fg[bad] = rng.random((k, 3), dtype=np.float32)
        bg[bad] = rng.random((k, 3), dtype=np.float32)
        bad = np.abs((fg - bg) @ _LUMA) < _MIN_CONTRAST
    return fg, bg


def _take(params: _Params, index: slice) -> _Params:
    return _Params(**{k: v[index] for k, v in vars(params).items()})


def _masks(params: _Params) -> np.ndarray:
    """Foreground coverage ``(n, S, S) float32`` in [0, 1] of every image."""
    n = len(params.labels)
    mask = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for k, name in enumerate(CLASSES):
        idx = np.flatnonzero(params.labels == k)
        if idx.size:
            mask[idx] = (
                _shape_masks(name, params, idx)
                if name in _SHAPES
                else _texture_masks(name, params, idx)
            )
    return mask


def _render(
    params: _Params, rng: np.random.Generator | None, mask: np.ndarray | None = None
) -> np.ndarray:
    """Images ``(n, 3, S, S) uint8`` of ``mask`` (default: computed); pixel noise is drawn
    from ``rng`` (none if ``None``)."""
    n = len(params.labels)
    if mask is None:
        mask = _masks(params)
    # float32 throughout: a float64 operand anywhere would double the cost of every step.
    fg = params.fg[:, :, None, None]
    bg = params.bg[:, :, None, None]
    img = bg + (fg - bg) * mask[:, None]
    x, y = _grid(np.full(n, IMAGE_SIZE / 2), np.full(n, IMAGE_SIZE / 2))
    theta = params.gradient_angle
    slope = (params.gradient / (IMAGE_SIZE / 2)).astype(np.float32)
    gx = (slope * np.cos(theta)).astype(np.float32)[:, None, None]
    gy = (slope * np.sin(theta)).astype(np.float32)[:, None, None]
    img += (x * gx + y * gy)[:, None]
    if rng is not None:
        noisy = np.flatnonzero(params.noise > 0)
        sigma = params.noise[noisy].astype(np.float32)[:, None, None, None]
        img[noisy] += rng.standard_normal((noisy.size, *img.shape[1:]), dtype=np.float32) * sigma
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _grid(cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to per-image origins, ``(n, 1, S)`` and ``(n, S, 1)``.

    Left unbroadcast: arithmetic on the two broadcasts to ``(n, S, S)`` with no copy.
    """
    c = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    x = c[None, None, :] - cx.astype(np.float32)[:, None, None]
    y = c[None, :, None] - cy.astype(np.float32)[:, None, None]
    return x, y


def _texture_masks(name: str, p: _Params, idx: np.ndarray) -> np.ndarray:
    """Foreground coverage ``(m, S, S) float32`` in [0, 1], anti-aliased analytically."""
    x, y = _grid(p.cx[idx], p.cy[idx])
    cos = np.cos(p.angle[idx]).astype(np.float32)[:, None, None]
    sin = np.sin(p.angle[idx]).astype(np.float32)[:, None, None]
    period = p.size[idx].astype(np.float32)[:, None, None]
    aux = p.aux[idx].astype(np.float32)[:, None, None]
    if name in _STRIPE_DEGREES:
        # Distance across the stripes; y points down, so "counter-clockwise on screen" flips it.
        across = -x * sin - y * cos
        return _square_wave(across, period, aux)
    # Lattice coordinates rotated by the angle.
    u = x * cos - y * sin
    v = x * sin + y * cos
    if name == "checkerboard":
        a = _square_wave(u, period, 0.5)
        b = _square_wave(v, period, 0.5)
        return a * b + (1.0 - a) * (1.0 - b)
    # dots
    lu = (u / period - np.floor(u / period) - 0.5) * period
    lv = (v / period - np.floor(v / period) - 0.5) * period
    return np.clip(aux * period - np.sqrt(lu * lu + lv * lv) + 0.5, 0.0, 1.0)


def _square_wave(t: np.ndarray, period: np.ndarray, duty: np.ndarray | float) -> np.ndarray:
    """Coverage of bands of width ``duty * period`` centred on multiples of ``period``.

    Area coverage is approximated by clipping the signed distance to a band's edge to
    one pixel, which is exact for straight edges.
    """
    phase = t / period
    distance = np.abs(phase - np.round(phase)) * period
    return np.clip(duty * period / 2 - distance + 0.5, 0.0, 1.0).astype(np.float32)


def _shape_masks(name: str, p: _Params, idx: np.ndarray) -> np.ndarray:
    """Foreground coverage ``(m, S, S) float32`` in [0, 1]; polygons drawn by Pillow."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    out = np.empty((idx.size, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for j, i in enumerate(idx):
        unit = _unit_polygon(name, float(p.aux[i]))
        c, s = np.cos(p.angle[i]), np.sin(p.angle[i])
        rotated = unit @ np.array([[c, s], [-s, c]])
        xy = (rotated * p.size[i] + (p.cx[i], p.cy[i])) * _SUPERSAMPLE
        canvas = Image.new("L", (big, big), 0)
        ImageDraw.Draw(canvas).polygon([tuple(v) for v in xy.tolist()], fill=255)
        small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        out[j] = np.asarray(small, dtype=np.float32) / 255.0
    return out


def _unit_polygon(name: str, aux: float) -> np.ndarray:
    """Vertices ``(V, 2)`` of an upright shape with circumradius 1; y points down."""

    def ring(degrees: np.ndarray, radii: np.ndarray | float = 1.0) -> np.ndarray:
        rad = np.deg2rad(degrees)
        return np.stack([np.cos(rad), np.sin(rad)], axis=1) * np.asarray(radii)[..., None]

    if name == "circle":
        return ring(np.arange(48) * 7.5)
    if name == "square":
        return ring(45.0 + 90.0 * np.arange(4))
    if name == "triangle":
        return ring(-90.0 + 120.0 * np.arange(3))
    if name == "hexagon":
        return ring(-90.0 + 60.0 * np.arange(6))
    if name == "star":
        return ring(-90.0 + 36.0 * np.arange(10), np.tile([1.0, aux], 5))
    # cross: two bars of half-length a and half-width w, tips on the unit circle
    a = 1.0 / np.hypot(1.0, aux)
    w = aux * a
    quarter = np.array([[w, -a], [w, -w], [a, -w]])  # top bar's right edge to right bar
    rot90 = np.array([[0.0, 1.0], [-1.0, 0.0]])
    return np.concatenate([quarter @ np.linalg.matrix_power(rot90, k) for k in range(4)])
