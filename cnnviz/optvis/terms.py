"""What every objective is made of: the :class:`Batch` the terms see, a :class:`Term`, and
the :class:`Objective` that sums weighted terms (the terms themselves are in
:mod:`cnnviz.optvis.objectives`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import LayerIndex

__all__ = ["Batch", "Objective", "Term", "one", "unit_shape"]


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
    #: Diversity: a row's value depends on the other rows of the batch.
    couples_rows: bool = False

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
            unit_shape(index, name)

    @abstractmethod
    def __call__(self, batch: Batch) -> torch.Tensor:
        """``(n,)`` float32 values of this term, one per row of ``batch``."""


def unit_shape(index: LayerIndex, name: str) -> tuple[int, int, int]:
    """Unit-first shape ``(units, h, w)`` of ``name`` (AmbiguousAxesError when unknown)."""
    return index.usable([name])[0].map_shape  # type: ignore[return-value]  # known axes


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
        return any(t.couples_rows for _, t in self.terms)

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


def one(term: Term, weight: float = 1.0) -> Objective:
    return Objective(((weight, term),))
