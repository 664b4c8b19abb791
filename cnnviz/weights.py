"""Filter weights as pictures: the kernels of a convolution, tiled into a grid.

The layer of a weight is a module, named by its qualified name (``block1.conv``,
``features.0``): a functional op or a second call of a reused module has no weights of its
own. Only 2-D convolutions have kernels to draw; any other module is a :class:`NoKernelError`
that names the layers that do.

A convolution's weight is ``(F, I, kh, kw)``: ``F`` output filters, each reading ``I`` input
channels (``I = in_channels / groups``). Three ways to draw it:

- ``rgb``: one RGB tile per filter, for a layer that reads the image (3 input channels). A
  weight ``w`` is drawn as ``w / (2 m) + 0.5``, so zero is mid-grey and ``±m`` is black or
  full colour; ``m`` is the largest ``|w|`` of the filter (``normalize="filter"``) or of the
  whole layer (``"layer"``).
- ``slices``: per filter, its ``k`` input-channel slices with the largest ``sum |w|``, one
  tile each, labelled with the input channel they read (grouped and depthwise convolutions
  included: a depthwise filter has one slice). Drawn on a colormap symmetric around zero.
- ``norm``: per filter, the L2 norm over its input channels, ``(kh, kw)``, as one heatmap
  from 0 to the largest norm of the filter or layer.

``auto`` is ``rgb`` for the first convolution of the model when it has 3 input channels per
filter, and ``slices`` otherwise.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError, NoKernelError, UnknownLayerError
from cnnviz.featuremaps import select_channels
from cnnviz.imaging.grid import (
    DEFAULT_MAX_GRID_PIXELS,
    GridLayout,
    grid_layout,
    tile_grid,
    to_pixels,
    upscale,
)
from cnnviz.imaging.heatmap import PAD_INDEX, apply_palette, palette, quantize
from cnnviz.imaging.png import DEFAULT_COMPRESS_LEVEL, encode_png
from cnnviz.layers import layer_index

__all__ = [
    "FilterWeights",
    "WeightMode",
    "WeightNormalize",
    "filter_weights",
    "kernel_layers",
]

WeightMode = Literal["auto", "rgb", "slices", "norm"]
WeightNormalize = Literal["filter", "layer"]

# Signed weights on a diverging colormap (zero in the middle); norms on a sequential one.
_SIGNED_COLORMAP = "coolwarm"
_NORM_COLORMAP = "viridis"
# Auto scale makes a kernel about this many pixels wide: a 3×3 kernel drawn at 1:1 is a dot.
_AUTO_TILE_PIXELS = 32
_MAX_AUTO_SCALE = 16
_DEFAULT_K = 4


@dataclass(frozen=True)
class FilterWeights:
    """The grid of one convolution's kernels.

    ``weight_shape`` is ``(F, I, kh, kw)``. Tile ``i`` shows filter ``layout.channels[i]``
    and, in ``slices`` mode, input channel ``input_channels[i]`` (``None`` otherwise).
    ``stats`` is ``(n, 4) float32``: min, max, mean and L2 norm of the weights behind each
    tile (the slice, or the whole filter). ``values`` holds the numbers drawn, per tile:
    ``(n, 3, kh, kw)`` (rgb), ``(n, kh, kw)`` weights (slices) or norms (norm). ``pixels``
    is the grid, ``(H, W) uint8`` palette indices with ``palette`` ``(256, 3) uint8``, or
    ``(H, W, 3) uint8`` RGB with ``palette`` None. All on the CPU.
    """

    name: str
    kind: str
    weight_shape: tuple[int, int, int, int]
    groups: int
    mode: Literal["rgb", "slices", "norm"]
    normalize: WeightNormalize
    scale: int
    layout: GridLayout
    input_channels: tuple[int | None, ...]
    stats: torch.Tensor
    values: torch.Tensor
    pixels: torch.Tensor
    palette: torch.Tensor | None

    @property
    def filters(self) -> tuple[int, ...]:
        """The filter shown in each tile."""
        return self.layout.channels

    def rgb(self) -> torch.Tensor:
        """The grid as ``(H, W, 3) uint8`` RGB."""
        if self.palette is None:
            return self.pixels
        return apply_palette(self.pixels, self.palette)

    def png(self, compress_level: int = DEFAULT_COMPRESS_LEVEL) -> bytes:
        """The grid as a PNG (a palette PNG for heatmaps, RGB for ``rgb`` tiles)."""
        return encode_png(self.pixels, palette=self.palette, compress_level=compress_level)


def _kernel(module: nn.Module) -> torch.Tensor | None:
    """The ``(F, I, kh, kw)`` weight of a 2-D (non-transposed) convolution, else None."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Conv2d) and isinstance(weight, torch.Tensor) and weight.dim() == 4:
        return weight
    return None


def kernel_layers(model: nn.Module) -> list[str]:
    """The qualified names of the modules of ``model`` that have 2-D convolution kernels."""
    return [name for name, module in model.named_modules() if _kernel(module) is not None]


def _lookup(model: nn.Module, layer: str, model_name: str) -> tuple[nn.Module, torch.Tensor]:
    """The module named ``layer`` and its kernel; UnknownLayerError or NoKernelError."""
    modules = dict(model.named_modules())
    kernels = kernel_layers(model)
    module = modules.get(layer) if layer else None
    if module is None:
        _not_a_module(model, layer, model_name, kernels)
    weight = _kernel(module)
    if weight is not None:
        return module, weight
    inside = [name for name in kernels if name.startswith(layer + ".")]
    listed = inside or kernels
    shown = ", ".join(map(repr, listed[:12])) + (" ..." if len(listed) > 12 else "")
    where = f"the kernels inside it are {shown}" if inside else f"layers with kernels: {shown}"
    if not kernels:
        where = f"model {model_name!r} has no 2-D convolution"
    raise NoKernelError(
        f"layer {layer!r} of model {model_name!r} is a {type(module).__name__}, which has no "
        f"2-D convolution kernel to draw; {where}"
    )


def _not_a_module(model: nn.Module, layer: str, model_name: str, kernels: list[str]) -> NoReturn:
    """Why ``layer``, not a module's name, has no weights: a later call of a module, a
    functional op, or no layer at all (UnknownLayerError with the closest kernel layers)."""
    suggestions = difflib.get_close_matches(layer, kernels, n=3, cutoff=0.5)
    try:
        found = layer_index(model, name=model_name).module_of(layer)
    except UnknownLayerError:
        raise UnknownLayerError(layer, model_name, suggestions) from None
    if found is None:
        raise NoKernelError(
            f"layer {layer!r} of model {model_name!r} is a functional op, which has no weights "
            f"of its own; layers with kernels: {', '.join(map(repr, kernels[:12]))}"
        )
    module, call = found
    raise NoKernelError(
        f"layer {layer!r} of model {model_name!r} is call {call} of module {module!r}, which "
        f"has the same weights on every call: ask for {module!r}"
    )


def _resolve_mode(
    mode: WeightMode, weight: torch.Tensor, name: str, first: bool
) -> Literal["rgb", "slices", "norm"]:
    inputs = weight.shape[1]
    if mode == "auto":
        return "rgb" if first and inputs == 3 else "slices"
    if mode == "rgb" and inputs != 3:
        raise InvalidArgumentError(
            f"mode 'rgb' needs 3 input channels per filter, and layer {name!r} has {inputs}; "
            "use mode 'slices' or 'norm'"
        )
    if mode not in ("rgb", "slices", "norm"):
        raise InvalidArgumentError(f"mode must be 'auto', 'rgb', 'slices' or 'norm', got {mode!r}")
    return mode


def _extent(per: torch.Tensor, normalize: WeightNormalize) -> torch.Tensor:
    """The extent ``m > 0`` of each filter from its own ``per`` ``(F,)``, or the layer's."""
    m = per if normalize == "filter" else per.amax().expand_as(per)
    return torch.where(m > 0, m, torch.ones_like(m))


def _auto_scale(tile: tuple[int, int], count: int, columns: int, padding: int, cap: int) -> int:
    """The largest scale up to the auto target whose grid fits ``cap`` pixels (at least 1)."""
    side = max(tile)
    scale = max(1, min(_MAX_AUTO_SCALE, _AUTO_TILE_PIXELS // side))
    rows = -(-count // columns)
    while scale > 1:
        height = rows * (tile[0] * scale + padding) + padding
        width = columns * (tile[1] * scale + padding) + padding
        if height * width <= cap:
            break
        scale -= 1
    return scale


def filter_weights(
    model: nn.Module,
    layer: str,
    *,
    mode: WeightMode = "auto",
    k: int | None = None,
    filters: Sequence[int] | None = None,
    top_k: int | None = None,
    normalize: WeightNormalize = "filter",
    colormap: str | None = None,
    columns: int | None = None,
    padding: int = 1,
    scale: int | None = None,
    max_grid_pixels: int = DEFAULT_MAX_GRID_PIXELS,
    model_name: str = "model",
) -> FilterWeights:
    """The kernels of the convolution ``layer`` (a module's qualified name) as a grid.

    ``mode`` is described in the module docstring. ``filters`` (a list, in that order) or
    ``top_k`` (the filters with the largest L2 norm, largest first) pick the filters; default
    all. ``k`` is the number of slices per filter in ``slices`` mode (default 4, at most the
    filter's input channels). ``normalize``: one scale per ``filter`` or for the whole
    ``layer``. ``colormap`` defaults to ``coolwarm`` for signed weights and ``viridis`` for
    norms (``rgb`` tiles use none). ``scale`` defaults to about 32 pixels per kernel, less if
    the grid would exceed ``max_grid_pixels``. Reads the weights only: no forward pass, the
    model is not touched. Raises :class:`UnknownLayerError`, :class:`NoKernelError` or
    :class:`InvalidArgumentError`.
    """
    if normalize not in ("filter", "layer"):
        raise InvalidArgumentError(f"normalize must be 'filter' or 'layer', got {normalize!r}")
    if k is not None and k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    if filters is not None and top_k is not None:
        raise InvalidArgumentError("give filters or top_k, not both")
    if filters is not None and len(filters) == 0:
        raise InvalidArgumentError("filters is empty; omit it to draw every filter")
    if top_k is not None and top_k < 1:
        raise InvalidArgumentError(f"top_k must be >= 1, got {top_k}")
    if scale is not None and scale < 1:
        raise InvalidArgumentError(f"scale must be >= 1, got {scale}")
    if padding < 0:
        raise InvalidArgumentError(f"padding must be >= 0, got {padding}")
    module, weight = _lookup(model, layer, model_name)
    first = kernel_layers(model)[0] == layer
    resolved = _resolve_mode(mode, weight, layer, first)
    named = palette(colormap or _default_colormap(resolved))  # validates a name rgb ignores
    colours = None if resolved == "rgb" else named
    w = weight.detach().float().cpu()  # (F, I, kh, kw)
    norms = w.flatten(1).norm(dim=1)
    bad = [f for f in filters or () if not 0 <= f < len(norms)]
    if bad:
        raise InvalidArgumentError(
            f"filter {bad[0]} is out of range for layer {layer!r}, which has {len(norms)} "
            f"filters (valid: 0..{len(norms) - 1})"
        )
    chosen = select_channels(norms, channels=filters, top_k=top_k, layer=layer)
    picked = torch.tensor(chosen, dtype=torch.long)
    groups = int(getattr(module, "groups", 1))
    drawn = _DRAW[resolved](w, picked, normalize, k or _DEFAULT_K, groups)
    kh, kw = w.shape[2:]
    count = len(drawn.filters)
    if columns is None and count > len(chosen):
        columns = count // len(chosen)  # slices: one row per filter
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    used_scale = scale or _auto_scale((kh, kw), count, columns, padding, max_grid_pixels)
    layout = grid_layout(
        count,
        (kh * used_scale, kw * used_scale),
        columns=columns,
        padding=padding,
        channels=drawn.filters,
        max_pixels=max_grid_pixels,
    )
    fill = 255 if colours is None else PAD_INDEX  # white padding either way
    pixels = tile_grid(upscale(drawn.tiles, used_scale), layout, fill=fill)
    return FilterWeights(
        name=layer,
        kind=type(module).__name__,
        weight_shape=(w.shape[0], w.shape[1], kh, kw),
        groups=groups,
        mode=resolved,
        normalize=normalize,
        scale=used_scale,
        layout=layout,
        input_channels=drawn.input_channels,
        stats=_stats(drawn.weights),
        values=drawn.values,
        pixels=pixels,
        palette=colours,
    )


def _default_colormap(mode: str) -> str:
    return _NORM_COLORMAP if mode == "norm" else _SIGNED_COLORMAP


def _stats(values: torch.Tensor) -> torch.Tensor:
    """min, max, mean, L2 norm of each ``values[i]``: ``(n, 4)``."""
    flat = values.flatten(1)
    return torch.stack([flat.amin(1), flat.amax(1), flat.mean(1), flat.norm(dim=1)], dim=1)


@dataclass(frozen=True)
class _Drawn:
    """The tiles of one mode: filter and input channel of each, the numbers behind them (the
    weights reported, the statistics), and the tiles as pixels, ``(n, kh, kw)`` palette indices
    or ``(n, kh, kw, 3)`` RGB."""

    filters: list[int]
    input_channels: tuple[int | None, ...]
    weights: torch.Tensor
    values: torch.Tensor
    tiles: torch.Tensor


def _draw_rgb(
    w: torch.Tensor, picked: torch.Tensor, normalize: WeightNormalize, _k: int, _groups: int
) -> _Drawn:
    m = _extent(w.flatten(1).abs().amax(dim=1), normalize)[picked]  # (n,)
    chosen = w[picked]  # (n, 3, kh, kw)
    rgb = chosen / (2 * m.view(-1, 1, 1, 1)) + 0.5  # zero is mid-grey, ±m the extremes
    none: tuple[int | None, ...] = (None,) * len(picked)
    return _Drawn(picked.tolist(), none, chosen, chosen, to_pixels(rgb))


def _draw_slices(
    w: torch.Tensor, picked: torch.Tensor, normalize: WeightNormalize, k: int, groups: int
) -> _Drawn:
    filters, inputs = w.shape[:2]
    k = min(k, inputs)
    strength = w[picked].abs().sum(dim=(2, 3))  # (n, I)
    # Stable, so equal slices keep input-channel order.
    order = torch.sort(strength, dim=1, descending=True, stable=True).indices[:, :k]  # (n, k)
    slices = torch.gather(w[picked], 1, order[:, :, None, None].expand(-1, -1, *w.shape[2:]))
    # Filter f of a grouped conv reads the I input channels of its group.
    group = picked // (filters // groups)
    channels = group[:, None] * inputs + order  # (n, k)
    m = _extent(w.flatten(1).abs().amax(dim=1), normalize)[picked].repeat_interleave(k)
    values = slices.flatten(0, 1)  # (n k, kh, kw)
    tiles = quantize(values, -m, m)
    return _Drawn(
        picked.repeat_interleave(k).tolist(),
        tuple(channels.flatten().tolist()),
        values,
        values,
        tiles,
    )


def _draw_norm(
    w: torch.Tensor, picked: torch.Tensor, normalize: WeightNormalize, _k: int, _groups: int
) -> _Drawn:
    norms = w.norm(dim=1)  # (F, kh, kw)
    hi = _extent(norms.flatten(1).amax(dim=1), normalize)[picked]
    none: tuple[int | None, ...] = (None,) * len(picked)
    tiles = quantize(norms[picked], torch.zeros_like(hi), hi)
    return _Drawn(picked.tolist(), none, w[picked], norms[picked], tiles)


_DRAW = {"rgb": _draw_rgb, "slices": _draw_slices, "norm": _draw_norm}
