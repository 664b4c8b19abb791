"""What the axes of a layer's output mean, and the one way to turn it into unit-first maps.

A layer's output for one image is read as one of:

- ``CHW``: channels, then the spatial grid (a convolution's output);
- ``HWC``: the grid, then channels (channels-last: Swin's stages, ConvNeXt's MLP);
- ``tokens``: ``N = p + h·w`` tokens of ``D`` features, ``p`` prefix tokens (a class token)
  before the ``h × w`` patch tokens (ViT);
- ``vector``: ``K`` features and no grid (a linear layer, the logits).

A *unit* is always a channel or feature, its *map* always the spatial grid. Layers whose axes
cannot be told (an attention matrix, a ``(D, N)`` transposed token layout, a permutation other
than ``(0, 2, 3, 1)``) have ``axes = None`` and a reason; every operation refuses them with
:class:`AmbiguousAxesError` until the registry declares them.

How the axes are found is in :mod:`cnnviz.axes_inference`; this module holds the vocabulary,
the declarations of the registry file, and :func:`unit_maps`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch

from cnnviz.errors import AmbiguousAxesError, LayerShapeError, RegistryConfigError, shown

__all__ = [
    "AXES",
    "AmbiguousAxesError",
    "Axes",
    "AxesDecl",
    "HasAxes",
    "LayerAxes",
    "check_axes",
    "declared_axes",
    "parse_axes_table",
    "unit_maps",
]

Axes = Literal["CHW", "HWC", "tokens", "vector"]
AXES: tuple[str, ...] = get_args(Axes)
MAX_PREFIX_TOKENS = 8


@dataclass(frozen=True)
class LayerAxes:
    """The meaning of one layer's output axes; ``axes is None`` when they are unknown.

    ``units`` is the number of channels or features; ``grid`` ``(h, w)`` the spatial grid of
    a unit's map (``(1, 1)`` for a vector); ``prefix_tokens`` the tokens before the grid (for
    ``tokens``). ``why`` says why the axes are unknown, or where they came from.
    """

    axes: Axes | None
    units: int | None = None
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    why: str = ""
    features_first: bool = False  # tokens laid out ``(D, N)`` (declared only)


@dataclass(frozen=True)
class AxesDecl:
    """One declaration of the registry's ``axes`` table: axes, and for tokens the grid and
    prefix (``token_grid`` None: found from the token count and the input size)."""

    axes: Axes
    token_grid: tuple[int, int] | None = None
    prefix_tokens: int | None = None
    features_first: bool = False


def parse_axes_table(table: object) -> dict[str, AxesDecl]:
    """The ``axes`` key of a ``[models.NAME]`` table: ``{pattern: "HWC" | {axes = ...}}``.

    Patterns are shell-style (:mod:`fnmatch`) and tried in the file's order; the first that
    matches a layer name wins. Raises :class:`RegistryConfigError` naming the bad entry.
    """
    if not isinstance(table, Mapping):
        raise RegistryConfigError(
            'axes must be a table of layer patterns, e.g. axes = {"blocks.*" = "tokens"}'
        )
    out: dict[str, AxesDecl] = {}
    for pattern, value in table.items():
        where = f"axes[{pattern!r}]"
        entry: Mapping[str, Any] = {"axes": value} if isinstance(value, str) else value
        if not isinstance(entry, Mapping):
            raise RegistryConfigError(f"{where} must be one of {list(AXES)} or a table")
        valid = {"axes", "token_grid", "prefix_tokens", "features_first"}
        unknown = sorted(set(entry) - valid)
        if unknown:
            raise RegistryConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(valid)}")
        axes = entry.get("axes")
        if axes not in AXES:
            raise RegistryConfigError(f"{where}: axes must be one of {list(AXES)}, got {axes!r}")
        grid = entry.get("token_grid")
        prefix = entry.get("prefix_tokens")
        first = entry.get("features_first", False)
        if not isinstance(first, bool):
            raise RegistryConfigError(f"{where}: features_first must be true or false")
        if axes != "tokens" and (grid is not None or prefix is not None or first):
            raise RegistryConfigError(
                f"{where}: token_grid, prefix_tokens and features_first are for tokens"
            )
        if grid is not None and (
            not isinstance(grid, list)
            or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)
        ):
            raise RegistryConfigError(f"{where}: token_grid must be [h, w], got {grid!r}")
        if prefix is not None and (
            not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 0
        ):
            raise RegistryConfigError(f"{where}: prefix_tokens must be an integer >= 0")
        size = (grid[0], grid[1]) if grid is not None else None
        out[str(pattern)] = AxesDecl(axes, size, prefix, first)
    return out


def token_grids(count: int, input_size: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """Every ``(prefix, (h, w))`` with ``count = prefix + h·w``, ``prefix <= 8`` and the grid
    the input cut by one integer stride (``h = H / s``, ``w = W / s``), at least 2 × 2 (one
    token is no grid)."""
    height, width = input_size
    fits = []
    for prefix in range(min(MAX_PREFIX_TOKENS, count - 1) + 1):
        for stride in range(1, min(height, width) + 1):
            if height % stride or width % stride:
                continue
            h, w = height // stride, width // stride
            if h * w == count - prefix and min(h, w) >= 2:
                fits.append((prefix, (h, w)))
    return fits


def declared_axes(
    decls: Mapping[str, AxesDecl],
    name: str,
    shape: tuple[int, ...],
    input_size: tuple[int, int],
) -> LayerAxes | None:
    """The axes the registry declares for layer ``name`` of per-image ``shape``, or None.

    A declaration that does not fit the shape gives unknown axes that say why.
    """
    decl = next((d for pattern, d in decls.items() if fnmatch.fnmatchcase(name, pattern)), None)
    if decl is None:
        return None
    said = f"declared {decl.axes!r} in the registry"
    if decl.axes == "vector":
        if len(shape) != 1:
            return LayerAxes(None, why=f"{said}, but the output {shape} is not (K,)")
        return LayerAxes("vector", shape[0], (1, 1), why=said)
    if decl.axes in ("CHW", "HWC"):
        if len(shape) != 3:
            return LayerAxes(None, why=f"{said}, but the output {shape} has not 3 axes")
        c, h, w = shape if decl.axes == "CHW" else (shape[2], shape[0], shape[1])
        return LayerAxes(decl.axes, c, (h, w), why=said)
    layout = "(D, N)" if decl.features_first else "(N, D)"
    if len(shape) != 2:
        return LayerAxes(None, why=f"{said}, but the output {shape} is not {layout}")
    count, features = shape[::-1] if decl.features_first else shape
    first = decl.features_first
    if decl.token_grid is not None:
        grid = decl.token_grid
        inferred = decl.prefix_tokens is None
        prefix: int = (
            count - grid[0] * grid[1] if decl.prefix_tokens is None else decl.prefix_tokens
        )
        if (
            prefix < 0
            or prefix + grid[0] * grid[1] != count
            or (inferred and prefix > MAX_PREFIX_TOKENS)
        ):
            return LayerAxes(
                None,
                why=f"{said} with token_grid {list(grid)} and prefix_tokens {prefix}, but the "
                f"layer has {count} tokens",
            )
        return LayerAxes("tokens", features, grid, prefix, why=said, features_first=first)
    fits = [
        fit
        for fit in token_grids(count, input_size)
        if decl.prefix_tokens is None or fit[0] == decl.prefix_tokens
    ]
    if len(fits) != 1:
        return LayerAxes(
            None, why=f"{said}, but {count} tokens fit {len(fits)} grids: declare token_grid"
        )
    prefix, grid = fits[0]
    return LayerAxes("tokens", features, grid, prefix, why=said, features_first=first)


class HasAxes(Protocol):
    """What :func:`unit_maps` reads: a :class:`LayerAxes` or a :class:`cnnviz.LayerInfo`."""

    @property
    def axes(self) -> str | None: ...
    @property
    def units(self) -> int | None: ...
    @property
    def grid(self) -> tuple[int, int] | None: ...
    @property
    def prefix_tokens(self) -> int: ...
    @property
    def why(self) -> str: ...
    @property
    def features_first(self) -> bool: ...


def check_axes(layer: HasAxes, name: str, model: str) -> None:
    """Raise :class:`AmbiguousAxesError` when ``layer``'s axes are unknown."""
    if layer.axes is None:
        raise AmbiguousAxesError(
            f"the axes of layer {shown(name)} of model {model!r} are ambiguous ({layer.why}); "
            f"choose another layer, or declare them in the model's registry entry: "
            f'axes = {{"{name}" = "HWC"}} (one of {", ".join(AXES)}; tokens take '
            "token_grid = [h, w] and prefix_tokens)",
            listing=("layers", model),
        )


def unit_maps(activations: torch.Tensor, layer: HasAxes) -> torch.Tensor:
    """A captured activation ``(B, *shape)`` as unit-first maps ``(B, units, h, w)``.

    ``CHW`` as it is; ``HWC`` permuted; ``tokens`` without their prefix tokens, the grid
    tokens reshaped to ``(h, w)``; ``vector`` ``(B, K, 1, 1)``. Differentiable (a view where
    it can be). Raises :class:`AmbiguousAxesError` for unknown axes and
    :class:`LayerShapeError` for an activation that does not have the layer's shape.
    """
    if layer.axes is None:
        raise AmbiguousAxesError(f"the axes of this layer are ambiguous ({layer.why})")
    assert layer.units is not None and layer.grid is not None
    h, w = layer.grid
    b = activations.shape[0]
    expected = {
        "CHW": (layer.units, h, w),
        "HWC": (h, w, layer.units),
        "tokens": (
            (layer.units, layer.prefix_tokens + h * w)
            if layer.features_first
            else (layer.prefix_tokens + h * w, layer.units)
        ),
        "vector": (layer.units,),
    }[layer.axes]
    if tuple(activations.shape[1:]) != expected:
        raise LayerShapeError(
            f"an activation of shape {tuple(activations.shape)} is not (B, {expected}) as its "
            f"{layer.axes} layer says"
        )
    if layer.axes == "CHW":
        return activations
    if layer.axes == "HWC":
        return activations.permute(0, 3, 1, 2)
    if layer.axes == "tokens" and layer.features_first:  # (B, D, N): declared
        return activations[:, :, layer.prefix_tokens :].reshape(b, layer.units, h, w)
    if layer.axes == "tokens":
        grid = activations[:, layer.prefix_tokens :, :]
        return grid.transpose(1, 2).reshape(b, layer.units, h, w)
    return activations.reshape(b, layer.units, 1, 1)
