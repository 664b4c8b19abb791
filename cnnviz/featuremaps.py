"""Feature-map grids: the activations of a layer, one heatmap per channel, tiled into a grid.

The notebook entry point::

    from cnnviz.featuremaps import GridOptions, feature_maps
    maps = feature_maps(model, x, ["layer1", "layer2"], GridOptions(top_k=16, colormap="magma"))
    maps[0].png()          # PNG bytes of the grid of layer1
    maps[0].layout         # rows, columns, tile size, padding, channel of each tile
    maps[0].stats          # (16, 3): min, max, mean of each drawn channel

Several layers share one forward pass, which stops at the deepest of them and runs under
``torch.inference_mode()``. The model is left as it was found (modes, hooks, ``requires_grad``).
The forward runs in fp32 unless asked otherwise (``precision``, see :mod:`cnnviz.precision`):
the numbers are exact by default.

The two halves are public for callers that batch images from several requests:
:func:`layer_activations` (one forward pass for a batch) and :func:`maps_from_activations`
(the grids of one image's activations).

A layer gives one tile per unit (channel or feature), each its map over the layer's grid
(:func:`cnnviz.axes.unit_maps`): ``(C, H, W)`` gives ``C`` tiles of ``H×W``, channels-last
``(H, W, C)`` the same, a ViT's tokens ``(1 + 14·14, 768)`` 768 tiles of 14×14 (the class
token left out). A vector layer ``(K,)`` (a linear layer, the logits) gives ``K`` tiles of
1×1, so top-k and the statistics still mean something. A layer whose axes are ambiguous is a
:class:`cnnviz.axes.AmbiguousAxesError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.axes import unit_maps
from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.imaging.grid import DEFAULT_MAX_GRID_PIXELS, GridLayout, grid_layout, tile_grid, upscale
from cnnviz.imaging.heatmap import (
    DEFAULT_COLORMAP,
    PAD_INDEX,
    Normalize,
    apply_palette,
    palette,
    quantize,
    range_of,
)
from cnnviz.imaging.png import DEFAULT_COMPRESS_LEVEL, encode_png
from cnnviz.layers import LayerInfo, layer_index
from cnnviz.precision import resolve_precision

__all__ = [
    "GridOptions",
    "LayerMaps",
    "feature_map_grid",
    "feature_maps",
    "layer_activations",
    "maps_from_activations",
    "select_channels",
]


@dataclass(frozen=True)
class LayerMaps:
    """The feature-map grid of one layer for one image.

    ``shape`` is the layer's maps for one image, ``(units, h, w)`` or ``(K,)``. ``stats`` is
    ``(n, 3) float32``: min, max and mean of the channel in each tile, in tile order
    (``layout.channels``). ``indices`` is the grid ``(H, W) uint8`` as palette indices
    (``PAD_INDEX`` for padding); ``palette`` is ``(256, 3) uint8``. All on the CPU.
    """

    name: str
    shape: tuple[int, ...]
    layout: GridLayout
    stats: torch.Tensor
    indices: torch.Tensor
    palette: torch.Tensor

    @property
    def channels(self) -> tuple[int, ...]:
        """The channel shown in each tile."""
        return self.layout.channels

    def rgb(self) -> torch.Tensor:
        """The grid as ``(H, W, 3) uint8`` RGB."""
        return apply_palette(self.indices, self.palette)

    def png(self, compress_level: int = DEFAULT_COMPRESS_LEVEL) -> bytes:
        """The grid as a palette PNG."""
        return encode_png(self.indices, palette=self.palette, compress_level=compress_level)


def select_channels(
    means: torch.Tensor,
    *,
    channels: Sequence[int] | None = None,
    top_k: int | None = None,
    layer: str = "layer",
) -> list[int]:
    """Which channels to draw, given each channel's mean activation ``means`` ``(C,)``.

    Default all, in order; ``channels``: those, in the order given, without repeats;
    ``top_k``: the ``k`` highest means, highest first (ties by index; at most ``C``).
    Raises :class:`InvalidArgumentError` for a channel outside ``0..C-1``.
    """
    count = int(means.shape[0])
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise InvalidArgumentError(
                f"channel {bad[0]} is out of range for layer {layer!r}, which has {count} "
                f"channels (valid: 0..{count - 1})"
            )
        return list(dict.fromkeys(int(c) for c in channels))
    if top_k is not None:
        order = torch.sort(means, descending=True, stable=True).indices
        return [int(c) for c in order[:top_k]]
    return list(range(count))


def _as_maps(name: str, model_name: str, output: object) -> torch.Tensor:
    """One image's activations as ``(C, H, W)`` float32; LayerShapeError for other shapes."""
    if not isinstance(output, torch.Tensor):
        raise LayerShapeError(
            f"layer {name!r} of model {model_name!r} outputs {type(output).__name__}, not a "
            "tensor; choose a layer that outputs (C, H, W)"
        )
    maps = output[0].float()
    if maps.dim() == 1:
        return maps.view(-1, 1, 1)
    if maps.dim() != 3:
        raise LayerShapeError(
            f"layer {name!r} of model {model_name!r} outputs shape {tuple(maps.shape)} per "
            "image; feature maps need (C, H, W), or (K,) drawn as K tiles of 1×1"
        )
    return maps


@dataclass(frozen=True)
class GridOptions:
    """How a layer's maps become a grid, checked once when made (InvalidArgumentError).

    ``channels``/``top_k`` pick the channels (:func:`select_channels`); ``normalize`` maps
    each channel's own range (``"channel"``) or the whole layer's range (``"layer"``) onto
    ``colormap`` (a matplotlib colormap name); ``columns``, ``padding`` and integer ``scale``
    (nearest-neighbour upscaling) shape the grid, which may not exceed ``max_grid_pixels``.
    """

    channels: tuple[int, ...] | None = None
    top_k: int | None = None
    normalize: Normalize = "channel"
    colormap: str = DEFAULT_COLORMAP
    columns: int | None = None
    padding: int = 1
    scale: int = 1
    max_grid_pixels: int = DEFAULT_MAX_GRID_PIXELS

    def __post_init__(self) -> None:
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(self.channels))
        if self.channels is not None and self.top_k is not None:
            raise InvalidArgumentError("give channels or top_k, not both")
        if self.channels is not None and len(self.channels) == 0:
            raise InvalidArgumentError("channels is empty; omit it to draw every channel")
        if self.top_k is not None and self.top_k < 1:
            raise InvalidArgumentError(f"top_k must be >= 1, got {self.top_k}")
        if self.scale < 1:
            raise InvalidArgumentError(f"scale must be >= 1, got {self.scale}")
        if self.padding < 0:
            raise InvalidArgumentError(f"padding must be >= 0, got {self.padding}")
        if self.normalize not in ("channel", "layer"):
            raise InvalidArgumentError(
                f"normalize must be 'channel' or 'layer', got {self.normalize!r}"
            )
        palette(self.colormap)


def feature_maps(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    grid: GridOptions = GridOptions(),
    *,
    precision: str = "fp32",
) -> list[LayerMaps]:
    """The feature-map grid of each of ``layers`` for one preprocessed image ``x``.

    ``x`` is ``(C, H, W)`` or ``(1, C, H, W)`` float, normalised as the model expects (see
    :meth:`cnnviz.models.ModelSpec.preprocess`); it is moved to the model's device and dtype.
    ``grid`` applies to every layer. ``precision``: the forward's, ``"fp32"`` (exact, the
    default), ``"auto"``, ``"bf16"`` or ``"fp16"`` (:mod:`cnnviz.precision`).

    Returns one :class:`LayerMaps` per distinct layer, in the order asked. Raises
    :class:`UnknownLayerError`, :class:`LayerShapeError` or :class:`InvalidArgumentError`.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise InvalidArgumentError(f"x must be (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    outputs = layer_activations(model, x, layers, precision=precision)
    return maps_from_activations(outputs, list(outputs), grid, model_name=layer_index(model).name)


def layer_activations(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """One forward pass of a batch ``x`` ``(N, C, H, W)``: ``{layer: (N, units, h, w)}``
    unit-first (:func:`cnnviz.axes.unit_maps`), or ``(N, K)`` for a vector layer; fp32.

    The layers are resolved (UnknownLayerError; AmbiguousAxesError for a layer whose axes are
    unknown), without repeats, in the order asked; the forward stops at the deepest, runs under
    ``torch.inference_mode()`` in ``precision`` (``"fp32"``: exact, a contiguous input, no
    autocast), and leaves the model as found.
    """
    index = layer_index(model, (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])))
    infos = {info.name: info for info in index.usable(layers)}
    names = list(infos)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    numerics = resolve_precision(precision, x.device)
    if not numerics.reduced:
        numerics = numerics.exact()
    with torch.inference_mode():
        with numerics.autocast():
            outputs = index.capture(numerics.prepare(x), names)
        return {
            name: _unit_first(out.float() if out.is_floating_point() else out, infos[name])
            for name, out in outputs.items()
        }


def _unit_first(out: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """``(N, units, h, w)``; a vector layer stays ``(N, K)`` (drawn as 1×1 tiles)."""
    return out if info.axes == "vector" else unit_maps(out, info)


def maps_from_activations(
    outputs: Mapping[str, object],
    layers: Sequence[str],
    grid: GridOptions = GridOptions(),
    *,
    model_name: str = "model",
) -> list[LayerMaps]:
    """The grids of one image: ``outputs[layer]`` is ``(1, *shape)`` (as from
    :func:`layer_activations` for a batch of one, or one row of a batch), for each of
    ``layers``."""
    colours = palette(grid.colormap)
    with torch.inference_mode():
        return [_layer_maps(name, model_name, outputs[name], grid, colours) for name in layers]


def feature_map_grid(
    activations: torch.Tensor,
    name: str = "activations",
    grid: GridOptions = GridOptions(),
) -> LayerMaps:
    """The grid of activations already at hand: ``(C, H, W)``, or ``(K,)`` as ``K`` 1×1 tiles;
    ``name`` labels the result and errors."""
    (maps,) = maps_from_activations(
        {name: activations.unsqueeze(0)}, [name], grid, model_name="activations"
    )
    return maps


def _layer_maps(
    name: str, model_name: str, output: object, grid: GridOptions, colours: torch.Tensor
) -> LayerMaps:
    """The grid of one layer's ``output`` ``(1, *shape)``; options already checked."""
    maps = _as_maps(name, model_name, output)
    shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
    flat = maps.flatten(1)
    stats = torch.stack([flat.amin(dim=1), flat.amax(dim=1), flat.mean(dim=1)], dim=1)
    chosen = select_channels(stats[:, 2], channels=grid.channels, top_k=grid.top_k, layer=name)
    _, height, width = maps.shape
    layout = grid_layout(
        len(chosen),
        (height * grid.scale, width * grid.scale),
        columns=grid.columns,
        padding=grid.padding,
        channels=chosen,
        max_pixels=grid.max_grid_pixels,
    )
    # Over every channel, drawn or not: a layer range must not depend on the selection.
    lo, hi = range_of(stats[:, 0], stats[:, 1], grid.normalize)
    if chosen == list(range(len(stats))):  # every channel in order (the default): no copies
        indices, tile_stats = quantize(maps, lo, hi), stats
    else:
        picked = torch.tensor(chosen, device=maps.device)
        indices, tile_stats = quantize(maps[picked], lo[picked], hi[picked]), stats[picked]
    tiles = tile_grid(upscale(indices, grid.scale), layout, fill=PAD_INDEX)
    return LayerMaps(
        name=name,
        shape=shape,
        layout=layout,
        stats=tile_stats.cpu(),
        indices=tiles.cpu(),
        palette=colours,
    )
