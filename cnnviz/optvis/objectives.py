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
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.layers import LayerIndex

__all__ = [
    "Batch",
    "Objective",
    "Term",
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


@dataclass(frozen=True)
class Batch:
    """What the terms see for one batch (or chunk) of units.

    - ``images``: ``(n, C, H, W)`` float32 in ``[0, 1]``, the optimized images before the
      random transforms (what penalties apply to);
    - ``layers``: layer name → unit-first ``(n, units, h, w)`` of the transformed images;
    - ``units``: ``(n,)`` int64, the index in the objective of the unit each row optimizes;
    - ``groups``: ``(n,)`` int64, rows with equal values optimize the same objective.
    """

    images: torch.Tensor
    layers: Mapping[str, torch.Tensor]
    units: torch.Tensor
    groups: torch.Tensor


class Term(ABC):
    """One summand of an objective: a value per batch row, higher is better."""

    #: Penalties and diversity: excluded from the reported unit objectives.
    regularizer: bool = False

    @property
    @abstractmethod
    def layers(self) -> tuple[str, ...]:
        """The layers this term reads (empty for a penalty on the image)."""

    @property
    def n_units(self) -> int | None:
        """Units this term distinguishes; ``None`` or 1: it applies alike to every unit."""
        return None

    def unit_key(self, unit: int) -> Hashable:
        """What unit ``unit`` of this term optimizes; equal keys make a diversity group."""
        return None

    def validate(self, index: LayerIndex) -> None:
        """Raise if the model lacks the layer, its axes are ambiguous or a unit out of range."""
        for name in self.layers:
            _shape(index, name)

    @abstractmethod
    def __call__(self, batch: Batch) -> torch.Tensor:
        """``(n,)`` float32 values of this term, one per row of ``batch``."""


def _shape(index: LayerIndex, name: str) -> tuple[int, int, int]:
    """Unit-first shape ``(units, h, w)`` of ``name`` (AmbiguousAxesError when unknown)."""
    return index.usable([name])[0].map_shape  # type: ignore[return-value]  # known axes


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
class _Channel(Term):
    layer: str
    channels: tuple[int, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def n_units(self) -> int:
        return len(self.channels)

    def unit_key(self, unit: int) -> Hashable:
        return self.channels[unit if len(self.channels) > 1 else 0]

    def validate(self, index: LayerIndex) -> None:
        shape = _shape(index, self.layer)
        _check_range(self.channels, shape[0], "channel", "channels", self.layer, index.name)

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer]
        picked = act[_rows(act), _per_row(self.channels, batch.units)]
        return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked


@dataclass(frozen=True)
class _Neuron(Term):
    layer: str
    channels: tuple[int, ...]
    y: int | None
    x: int | None

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def n_units(self) -> int:
        return len(self.channels)

    def unit_key(self, unit: int) -> Hashable:
        return (self.channels[unit if len(self.channels) > 1 else 0], self.y, self.x)

    def validate(self, index: LayerIndex) -> None:
        shape = _shape(index, self.layer)
        if index.info(self.layer).axes == "vector":
            raise LayerShapeError(
                f"a neuron needs a grid: (C, H, W), (H, W, C) or tokens; {self.layer!r} of "
                f"model {index.name!r} is a vector: use a channel objective instead"
            )
        _check_range(self.channels, shape[0], "channel", "channels", self.layer, index.name)
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
        return act[_rows(act), _per_row(self.channels, batch.units), y, x]


@dataclass(frozen=True)
class _LayerEnergy(Term):
    layer: str

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return batch.layers[self.layer].flatten(1).pow(2).mean(dim=1)


@dataclass(frozen=True, eq=False)
class _Direction(Term):
    layer: str
    vectors: torch.Tensor  # (k, C) float32
    keys: tuple[tuple[float, ...], ...] = field(repr=False)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def n_units(self) -> int:
        return int(self.vectors.shape[0])

    def unit_key(self, unit: int) -> Hashable:
        return self.keys[unit if len(self.keys) > 1 else 0]

    def validate(self, index: LayerIndex) -> None:
        shape = _shape(index, self.layer)
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
class _ClassLogit(Term):
    layer: str
    classes: tuple[int, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def n_units(self) -> int:
        return len(self.classes)

    def unit_key(self, unit: int) -> Hashable:
        return self.classes[unit if len(self.classes) > 1 else 0]

    def validate(self, index: LayerIndex) -> None:
        shape = _shape(index, self.layer)
        if index.info(self.layer).axes != "vector":
            raise LayerShapeError(
                f"a class logit needs a layer with (K,) output, such as the classifier; "
                f"layer {self.layer!r} of model {index.name!r} has a grid"
            )
        _check_range(self.classes, shape[0], "class", "classes", self.layer, index.name)

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch.layers[self.layer].flatten(1)  # (n, K)
        return act[_rows(act), _per_row(self.classes, batch.units)]


@dataclass(frozen=True)
class _Diversity(Term):
    layer: str
    regularizer = True

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

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


@dataclass(frozen=True)
class Objective:
    """A weighted sum of terms over a batch of units. Build it with the functions below.

    ``n_units`` — how many images a render of it yields — and ``layers`` are known without a
    model. :meth:`validate` checks it against one; rendering calls it before step 1.
    """

    terms: tuple[tuple[float, Term], ...]

    def __post_init__(self) -> None:
        counts = {t.n_units for _, t in self.terms if t.n_units not in (None, 1)}
        if len(counts) > 1:
            raise InvalidArgumentError(
                f"objectives with {' and '.join(map(str, sorted(counts)))} units cannot be "
                "added: every term must have the same number of units, or one"
            )
        for weight, term in self.terms:
            if not math.isfinite(weight):
                raise InvalidArgumentError(f"objective weights must be finite, got {weight}")
            if term.regularizer and weight < 0:
                raise InvalidArgumentError(
                    f"{term!r} is a penalty already signed to lower the objective: add it "
                    "with a positive weight (objective + l1(0.01)), do not subtract it"
                )

    @property
    def n_units(self) -> int:
        """Number of units, hence of images a render yields."""
        counts = [t.n_units for _, t in self.terms if t.n_units is not None]
        return max(counts, default=1)

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers the objective reads, without duplicates, in the order of its terms."""
        return tuple(dict.fromkeys(name for _, t in self.terms for name in t.layers))

    @property
    def couples_units(self) -> bool:
        """Whether some term compares rows with each other (diversity)."""
        return any(isinstance(t, _Diversity) for _, t in self.terms)

    def validate(self, index: LayerIndex) -> None:
        """Check every layer and unit against the model of ``index``; raises the core errors.

        ``UnknownLayerError`` for a layer the model lacks, ``InvalidArgumentError`` for a unit
        out of range (the message gives the valid range), ``LayerShapeError`` for a layer of
        the wrong kind. Runs at most one forward pass of zeros (to learn the shapes), cached.
        """
        for _, term in self.terms:
            term.validate(index)

    def groups(self) -> list[int]:
        """For each unit, the id of the set of units with the same objective (0, 1, ...)."""
        ids: dict[Hashable, int] = {}
        own = [t for _, t in self.terms if not t.regularizer]
        return [
            ids.setdefault(tuple(t.unit_key(u) for t in own), len(ids)) for u in range(self.n_units)
        ]

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, total)``, each ``(n,)``: the units' own objective without
        regularizers, and the full weighted sum that is maximised."""
        n = batch.units.shape[0]
        device = batch.units.device
        own = torch.zeros(n, device=device)
        total = torch.zeros(n, device=device)
        for weight, term in self.terms:
            value = weight * term(batch)
            total = total + value
            if not term.regularizer:
                own = own + value
        return own, total

    def __add__(self, other: object) -> Objective:
        if isinstance(other, Objective):
            return Objective(self.terms + other.terms)
        if isinstance(other, int | float) and other == 0:
            return self  # so that sum() of objectives works
        return NotImplemented

    __radd__ = __add__

    def __mul__(self, weight: object) -> Objective:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return NotImplemented
        return Objective(tuple((w * float(weight), t) for w, t in self.terms))

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> Objective:
        if isinstance(divisor, bool) or not isinstance(divisor, int | float):
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: object) -> Objective:
        if isinstance(other, Objective):
            return self + (-other)
        return NotImplemented


def _one(term: Term, weight: float = 1.0) -> Objective:
    return Objective(((weight, term),))


def channel(layer: str, channels: int | Sequence[int]) -> Objective:
    """Mean activation of a channel (or token feature) over the grid; one unit per channel
    given. On a ``(K,)`` layer, the value itself."""
    return _one(_Channel(layer, _as_tuple(channels, "channel")))


def neuron(
    layer: str, channels: int | Sequence[int], y: int | None = None, x: int | None = None
) -> Objective:
    """Activation of a channel at ``(y, x)`` of the grid (tokens: the token grid); None: centre."""
    return _one(_Neuron(layer, _as_tuple(channels, "channel"), y, x))


def layer(layer: str) -> Objective:
    """DeepDream: mean squared activation of the whole layer; one unit."""
    return _one(_LayerEnergy(layer))


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
    return _one(_Direction(layer, table, keys))


def class_logit(layer: str, classes: int | Sequence[int]) -> Objective:
    """The logit (pre-softmax output) of a class at a ``(K,)`` layer; one unit per class."""
    return _one(_ClassLogit(layer, _as_tuple(classes, "class")))


def diversity(layer: str, weight: float = 100.0) -> Objective:
    """Penalise similar Gram matrices at ``layer`` among images of the same unit (Lucid)."""
    return _one(_Diversity(layer), _weight(weight))


def l1(weight: float = 1.0, *, layer: str | None = None, constant: float = 0.0) -> Objective:
    """Penalty: mean ``|x - constant|`` of the image (or of ``layer``'s activations)."""
    return _one(_Penalty("l1", layer, constant), _weight(weight))


def l2(weight: float = 1.0, *, layer: str | None = None, constant: float = 0.0) -> Objective:
    """Penalty: root mean square of ``x - constant``, image or ``layer``."""
    return _one(_Penalty("l2", layer, constant), _weight(weight))


def total_variation(weight: float = 1.0, *, layer: str | None = None) -> Objective:
    """Penalty: mean absolute difference between neighbouring pixels, image or ``layer``."""
    return _one(_Penalty("tv", layer), _weight(weight))


def _weight(weight: float) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise InvalidArgumentError(f"a penalty weight must be finite and >= 0, got {weight}")
    return float(weight)
