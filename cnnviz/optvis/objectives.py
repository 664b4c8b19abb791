"""Objectives: what to maximise, for how many units, on which layers.

An :class:`Objective` is a weighted sum of terms. It knows, before anything runs, how many
*units* it optimizes (one image each: ``channel("block2.relu", [0, 3, 5])`` has 3), which
layers it reads, and how to check itself against a model (:meth:`Objective.validate`). Terms
combine with ``+``, ``-``, and multiplication by a number::

    channel("layer3", [0, 1]) + 0.5 * neuron("layer2", 7) + total_variation(0.05)

A term that concerns one unit (``neuron("layer2", 7)``) applies to every unit of the sum;
terms with several units must agree on their number.

**Regularizers** — :func:`l1`, :func:`l2`, :func:`total_variation` and :func:`diversity` —
are already signed (their value is minus the penalty): *add* them, with a positive weight.
Subtracting one would reward noise and is refused. They are left out of the per-unit values
the render loop reports, which are the units' own objectives.

**Diversity** compares images that optimize the *same* unit — ``channel("layer3", [9] * 4)
+ diversity("layer3", 100)`` asks for four different images of channel 9 — so units with
different objectives never push each other around, and a batch can be split into chunks
(units that optimize the same thing stay in one chunk).

Values are computed per batch row from a :class:`Batch`; a term returns ``(n,)`` values, one
per row, higher is better. Terms see layers unit-first, ``(n, units, h, w)``
(:func:`cnnviz.axes.unit_maps`): a unit is always a channel or feature.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.layers import LayerIndex
from cnnviz.optvis.terms import Batch, Objective, Term, one, unit_shape

__all__ = [
    "Batch",
    "Objective",
    "Term",
    "caricature",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "l1",
    "l2",
    "layer",
    "neuron",
    "total_variation",
]


def _as_tuple(values: int | Sequence[int], what: str) -> tuple[int, ...]:
    items = (values,) if isinstance(values, int) else tuple(values)
    if not items:
        raise InvalidArgumentError(f"at least one {what} is needed, got none")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise InvalidArgumentError(f"{what} must be integers, got {item!r}")
    return items


def _check_range(
    values: Sequence[int], count: int, what: str, plural: str, layer: str, model: str
) -> None:
    for value in values:
        if not 0 <= value < count:
            raise InvalidArgumentError(
                f"{what} {value} is out of range for layer {layer!r} of model {model!r}, "
                f"which has {count} {plural}: valid {plural} are 0..{count - 1}"
            )


def _per_row(values: tuple[int, ...], units: torch.Tensor) -> torch.Tensor:
    """The value of each row's unit: ``(n,)`` int64; a single value applies to every row."""
    table = torch.tensor(values, dtype=torch.long, device=units.device)
    return table[units] if len(values) > 1 else table.expand(units.shape[0])


def _rows(act: torch.Tensor) -> torch.Tensor:
    return torch.arange(act.shape[0], device=act.device)


@dataclass(frozen=True)
class _OnLayer(Term):
    """A term that reads one layer."""

    layer: str

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)


@dataclass(frozen=True)
class _Indexed(_OnLayer):
    """A term with one unit per index it was given (a channel or a class); a single index
    applies to every unit of the sum."""

    indices: tuple[int, ...]
    #: What an index counts, one and several (``channel``, ``channels``), for errors.
    names: ClassVar[tuple[str, str]]

    @property
    def n_units(self) -> int:
        return len(self.indices)

    def unit_key(self, unit: int) -> Hashable:
        return self.indices[unit if len(self.indices) > 1 else 0]

    def _check_indices(self, index: LayerIndex, count: int) -> None:
        """Every index within the ``count`` the layer has."""
        what, plural = self.names
        _check_range(self.indices, count, what, plural, self.layer, index.name)


@dataclass(frozen=True)
class _Channel(_Indexed):
    names = ("channel", "channels")

    def validate(self, index: LayerIndex) -> None:
        self._check_indices(index, unit_shape(index, self.layer)[0])

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer]
        picked = act[_rows(act), _per_row(self.indices, batch.units)]
        return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked


@dataclass(frozen=True)
class _Neuron(_Channel):
    y: int | None
    x: int | None

    def unit_key(self, unit: int) -> Hashable:
        return (super().unit_key(unit), self.y, self.x)

    def validate(self, index: LayerIndex) -> None:
        shape = unit_shape(index, self.layer)
        if index.info(self.layer).axes == "vector":
            raise LayerShapeError(
                f"a neuron needs a grid: (C, H, W), (H, W, C) or tokens; {self.layer!r} of "
                f"model {index.name!r} is a vector: use a channel objective instead"
            )
        self._check_indices(index, shape[0])
        for value, size, axis in ((self.y, shape[1], "y"), (self.x, shape[2], "x")):
            if value is not None and not 0 <= value < size:
                raise InvalidArgumentError(
                    f"neuron position {axis}={value} is out of range for layer {self.layer!r} "
                    f"of model {index.name!r} ({axis} in 0..{size - 1})"
                )

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer]
        y = act.shape[2] // 2 if self.y is None else self.y
        x = act.shape[3] // 2 if self.x is None else self.x
        return act[_rows(act), _per_row(self.indices, batch.units), y, x]


@dataclass(frozen=True)
class _LayerEnergy(_OnLayer):
    def __call__(self, batch: Batch) -> torch.Tensor:
        return batch.layers[self.layer].flatten(1).pow(2).mean(dim=1)


@dataclass(frozen=True, eq=False)
class _Direction(_OnLayer):
    vectors: torch.Tensor  # (k, C) float32
    keys: tuple[tuple[float, ...], ...] = field(repr=False)

    @property
    def n_units(self) -> int:
        return int(self.vectors.shape[0])

    def unit_key(self, unit: int) -> Hashable:
        return self.keys[unit if len(self.keys) > 1 else 0]

    def validate(self, index: LayerIndex) -> None:
        shape = unit_shape(index, self.layer)
        if self.vectors.shape[1] != shape[0]:
            raise InvalidArgumentError(
                f"a direction in layer {self.layer!r} of model {index.name!r} needs "
                f"{shape[0]} components (its channels), got {self.vectors.shape[1]}"
            )

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer]
        table = self.vectors.to(device=act.device, dtype=act.dtype)
        vectors = table[batch.units] if table.shape[0] > 1 else table.expand(act.shape[0], -1)
        dots = torch.einsum("nc...,nc->n...", act, vectors)  # dot product at every position
        return dots.flatten(1).mean(dim=1) if dots.dim() > 1 else dots


@dataclass(frozen=True)
class _ClassLogit(_Indexed):
    names = ("class", "classes")

    def validate(self, index: LayerIndex) -> None:
        shape = unit_shape(index, self.layer)
        if index.info(self.layer).axes != "vector":
            raise LayerShapeError(
                f"a class logit needs a layer with (K,) output, such as the classifier; "
                f"layer {self.layer!r} of model {index.name!r} has a grid"
            )
        self._check_indices(index, shape[0])

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer].flatten(1)  # (n, K)
        return act[_rows(act), _per_row(self.indices, batch.units)]


@dataclass(frozen=True, eq=False)
class _Caricature(_OnLayer):
    target: torch.Tensor  # (units, h, w) float32: the image's activations
    cossim_pow: float

    def validate(self, index: LayerIndex) -> None:
        shape = unit_shape(index, self.layer)
        if tuple(self.target.shape) != shape:
            raise InvalidArgumentError(
                f"a caricature of layer {self.layer!r} of model {index.name!r} needs its "
                f"activations {shape}, got {tuple(self.target.shape)}"
            )

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer].flatten(1)  # (n, units·h·w)
        target = self.target.to(device=act.device, dtype=act.dtype).flatten()
        dot = act @ target
        cossim = dot / (act.norm(dim=1) * target.norm()).clamp_min(1e-6)
        # Lucid's floor: a row pointing away from the image still climbs towards it.
        return dot * cossim.clamp_min(0.1).pow(self.cossim_pow)


@dataclass(frozen=True)
class _Diversity(_OnLayer):
    regularizer = True
    couples_rows = True

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer]
        # Lucid's diversity: cosine similarity of Gram matrices (style) between images that
        # optimize the same unit, summed over the others and averaged over the group.
        flat = act.flatten(2) if act.dim() > 2 else act[:, :, None]  # (n, C, positions)
        grams = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-10)
        similarity = grams @ grams.T
        same = batch.groups[:, None] == batch.groups[None, :]
        same = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
        group_size = same.sum(1).to(act.dtype) + 1.0
        return -(similarity * same).sum(1) / group_size


@dataclass(frozen=True)
class _Penalty(Term):
    kind: str  # "l1", "l2" or "tv"
    layer: str | None
    constant: float = 0.0
    regularizer = True

    @property
    def layers(self) -> tuple[str, ...]:
        return () if self.layer is None else (self.layer,)

    def __call__(self, batch: Batch) -> torch.Tensor:
        x = batch.images if self.layer is None else batch.layers[self.layer]
        if self.kind == "l1":
            return -(x - self.constant).abs().flatten(1).mean(1)
        if self.kind == "l2":
            return -((x - self.constant).pow(2).flatten(1).mean(1) + 1e-12).sqrt()
        if x.dim() != 4:
            raise LayerShapeError(f"total variation needs (N, C, H, W), got {tuple(x.shape)}")
        dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
        dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
        return -(dx + dy)


def channel(layer: str, channels: int | Sequence[int]) -> Objective:
    """Mean activation of a channel (or token feature) over the grid; one unit per channel
    given. On a ``(K,)`` layer, the value itself."""
    return one(_Channel(layer, _as_tuple(channels, "channel")))


def neuron(
    layer: str, channels: int | Sequence[int], y: int | None = None, x: int | None = None
) -> Objective:
    """Activation of a channel at ``(y, x)`` of the grid (tokens: the token grid); None: centre."""
    return one(_Neuron(layer, _as_tuple(channels, "channel"), y, x))


def layer(layer: str) -> Objective:
    """DeepDream: mean squared activation of the whole layer; one unit."""
    return one(_LayerEnergy(layer))


def direction(layer: str, vectors: torch.Tensor | Sequence[float]) -> Objective:
    """Mean over positions of the dot product with a direction in channel space.

    ``vectors`` is ``(C,)`` (one unit) or ``(k, C)`` (k units), C the layer's channels.
    """
    table = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
    if table.dim() == 1:
        table = table[None]
    if table.dim() != 2 or table.shape[0] == 0 or not torch.isfinite(table).all():
        raise InvalidArgumentError(
            f"a direction is a finite vector (C,) or vectors (k, C), got shape {tuple(table.shape)}"
        )
    keys = tuple(tuple(row) for row in table.tolist())
    return one(_Direction(layer, table, keys))


def class_logit(layer: str, classes: int | Sequence[int]) -> Objective:
    """The logit (pre-softmax output) of a class at a ``(K,)`` layer; one unit per class."""
    return one(_ClassLogit(layer, _as_tuple(classes, "class")))


def caricature(layer: str, activations: torch.Tensor, cossim_pow: float = 1.0) -> Objective:
    """Feature inversion, Lucid's caricature: ``dot(acts_img, acts) · max(0.1, cossim)^p``
    against an image's unit-first activations ``(units, h, w)`` (or ``(1, units, h, w)``) at
    ``layer``; one unit. A larger ``cossim_pow`` weighs the direction over the magnitude."""
    target = torch.as_tensor(activations, dtype=torch.float32).detach().cpu()
    if target.dim() == 4 and target.shape[0] == 1:
        target = target[0]
    if target.dim() != 3 or not torch.isfinite(target).all() or not target.any():
        raise InvalidArgumentError(
            "a caricature needs an image's finite, non-zero activations (units, h, w), got "
            f"shape {tuple(target.shape)}"
        )
    if not math.isfinite(cossim_pow) or cossim_pow < 0:
        raise InvalidArgumentError(f"cossim_pow must be finite and >= 0, got {cossim_pow}")
    return one(_Caricature(layer, target, float(cossim_pow)))


def diversity(layer: str, weight: float = 100.0) -> Objective:
    """Penalise similar Gram matrices at ``layer`` among images of the same unit (Lucid)."""
    return one(_Diversity(layer), _weight(weight))


def l1(weight: float = 1.0, *, layer: str | None = None, constant: float = 0.0) -> Objective:
    """Penalty: mean ``|x - constant|`` of the image (or of ``layer``'s activations)."""
    return one(_Penalty("l1", layer, constant), _weight(weight))


def l2(weight: float = 1.0, *, layer: str | None = None, constant: float = 0.0) -> Objective:
    """Penalty: root mean square of ``x - constant``, image or ``layer``."""
    return one(_Penalty("l2", layer, constant), _weight(weight))


def total_variation(weight: float = 1.0, *, layer: str | None = None) -> Objective:
    """Penalty: mean absolute difference between neighbouring pixels, image or ``layer``."""
    return one(_Penalty("tv", layer), _weight(weight))


def _weight(weight: float) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise InvalidArgumentError(f"a penalty weight must be finite and >= 0, got {weight}")
    return float(weight)
