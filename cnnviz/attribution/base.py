"""What an attribution method is, and the registry of them.

A method is one class in one module that registers itself with :func:`register`; the code
that dispatches looks it up by name (:func:`get_method`), never by an ``if`` chain. Each wraps
one of captum's attribution classes.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import LayerInfo

__all__ = [
    "AttributionMethod",
    "AttributionTask",
    "MethodResult",
    "get_method",
    "method_names",
    "register",
]


@dataclass(frozen=True)
class AttributionTask:
    """Everything a method needs for one image and its targets.

    ``scores`` maps a batch ``(N, C, H, W)`` to ``(N, K)`` class scores (the model with its
    output chosen). ``x`` is the image ``(1, C, H, W)``, normalised as the model expects;
    ``targets`` the ``T`` class indices; ``layer`` the module of a layer method (else None)
    and ``axes`` that layer's :class:`cnnviz.layers.LayerInfo` (how to read its output
    unit-first, :func:`cnnviz.axes.unit_maps`);
    ``baseline`` ``(1, C, H, W)``, the input that means "nothing" (integrated gradients,
    occlusion). ``steps``, ``window`` and ``stride`` are per-method settings, already checked.
    """

    scores: nn.Module
    x: torch.Tensor
    targets: Sequence[int]
    layer: nn.Module | None = None
    axes: LayerInfo | None = None
    baseline: torch.Tensor | None = None
    steps: int = 32
    window: int = 8
    stride: int = 4

    def batch(self) -> torch.Tensor:
        """The image repeated once per target, ``(T, C, H, W)``, requiring gradients: all
        targets in one batched forward and backward."""
        batch = self.x.detach().expand(len(self.targets), *self.x.shape[1:]).clone()
        return batch.requires_grad_()


@dataclass(frozen=True)
class MethodResult:
    """Maps ``(T, H, W) float32`` at the input's resolution, one per target; for a method with
    the completeness property, ``completeness`` ``(T, 2)``: the sum of each target's
    attributions and the score difference ``S(x) - S(baseline)`` it should equal."""

    maps: torch.Tensor
    completeness: torch.Tensor | None = None


class AttributionMethod(ABC):
    """One attribution method: a name, what it needs, and :meth:`attribute`."""

    name: ClassVar[str]
    #: Whether the method needs a ``layer`` (Grad-CAM and its guided variant).
    needs_layer: ClassVar[bool] = False
    #: Whether maps have a sign (positive: for the target; negative: against it).
    signed: ClassVar[bool] = False
    #: Whether the method's first forward is the image itself and only the gradient there
    #: matters: then the top class's gradient is the largest score's, and a call without
    #: targets needs no prediction forward of its own (Grad-CAM, saliency).
    local: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    @abstractmethod
    def attribute(self, task: AttributionTask) -> MethodResult:
        """The maps of every target in ``task``; gradients are enabled by the caller."""

    def passes(self, targets: int, steps: int, patches: int) -> int:
        """Images the model runs on for ``targets`` targets: the cost a caller bounds.

        ``steps`` are integrated gradients' steps, ``patches`` occlusion's patch positions.
        One forward and backward per target by default (a batch of the image, one per target).
        """
        return targets


_METHODS: dict[str, AttributionMethod] = {}
M = TypeVar("M", bound=type[AttributionMethod])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"attribution method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def method_names() -> list[str]:
    """The names of the registered methods, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> AttributionMethod:
    """The registered method ``name``; InvalidArgumentError naming the choices otherwise."""
    method = _METHODS.get(name)
    if method is None:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidArgumentError(
            f"unknown attribution method {name!r}; {hint}choose one of: {', '.join(method_names())}"
        )
    return method
