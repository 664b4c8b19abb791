"""What an attribution method is, and the registry of them.

A method is one class in one module that registers itself with :func:`register`; the code
that dispatches looks it up by name (:func:`get_method`), never by an ``if`` chain. Each wraps
one of captum's attribution classes.
"""

from __future__ import annotations

import contextlib
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from captum.attr import NoiseTunnel
from torch import nn

from cnnviz.errors import InvalidArgumentError
from cnnviz.layers import LayerInfo

__all__ = [
    "SMOOTH_TYPES",
    "AttributionMethod",
    "AttributionTask",
    "Cost",
    "CostInputs",
    "LayerGradientMethod",
    "MethodResult",
    "Smooth",
    "get_method",
    "method_names",
    "methods",
    "register",
]


SMOOTH_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
# Noisy images per forward and backward of a noise tunnel: bounds memory whatever the samples.
_NOISE_BATCH = 64


@dataclass(frozen=True)
class Smooth:
    """A noise tunnel (Smilkov et al. 2017; captum's ``NoiseTunnel``): the method runs on
    ``samples`` copies of the input plus Gaussian noise of σ = ``level`` × the input's value
    range (max - min), and the maps are averaged (``smoothgrad``), their squares averaged
    (``smoothgrad_sq``) or their variance taken (``vargrad``). ``seed`` seeds the noise."""

    type: str = "smoothgrad"
    samples: int = 16
    level: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class CostInputs:
    """What a method's cost depends on: targets, integrated gradients' ``steps``, occlusion's
    ``patches``, the layer's ``channels`` (Score-CAM) and a noise tunnel's ``samples``."""

    targets: int = 1
    steps: int = 32
    patches: int = 1
    channels: int = 0
    samples: int = 1


@dataclass(frozen=True)
class Cost:
    """A method's cost model: images run through the model, as a formula for people and a
    function of :class:`CostInputs` for code."""

    formula: str
    images: Callable[[CostInputs], int]


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
    smooth: Smooth | None = None

    def smoothed(self, explainer: Any) -> Any:
        """``explainer`` (a captum attribution) as it is, or in a seeded noise tunnel: an
        object whose ``attribute(inputs, target=..., **kwargs)`` gives the (smoothed) maps."""
        if self.smooth is None:
            return explainer
        return _Tunnel(explainer, self.smooth, self.x, len(self.targets))

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


class _Tunnel:
    """captum's ``NoiseTunnel`` around ``explainer``, its noise drawn from ``smooth.seed``
    (NoiseTunnel draws from the global generator: forked here, so nothing else is touched)."""

    def __init__(self, explainer: Any, smooth: Smooth, x: torch.Tensor, targets: int) -> None:
        self.tunnel = NoiseTunnel(explainer)
        self.smooth = smooth
        self.stdev = float(smooth.level * (x.max() - x.min()))
        self.device = x.device
        self.batch = max(1, min(smooth.samples, _NOISE_BATCH // max(1, targets)))

    def attribute(self, inputs: torch.Tensor, **kwargs: Any) -> Any:
        devices = [self.device] if self.device.type == "cuda" else []
        with _seeded(self.smooth.seed, devices):
            return self.tunnel.attribute(
                inputs,
                nt_type=self.smooth.type,
                nt_samples=self.smooth.samples,
                nt_samples_batch_size=self.batch,
                stdevs=self.stdev,
                **kwargs,
            )


@contextlib.contextmanager
def _seeded(seed: int, devices: list[torch.device]) -> Iterator[None]:
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class AttributionMethod(ABC):
    """One attribution method: a name, what it needs, its cost, and :meth:`attribute`."""

    name: ClassVar[str]
    #: The name people read (``Grad-CAM``).
    title: ClassVar[str] = ""
    #: The request options it reads, besides the image and targets.
    options: ClassVar[tuple[str, ...]] = ()
    #: Whether a noise tunnel (``smooth``) applies: the method is a gradient method.
    smoothable: ClassVar[bool] = False
    #: Images the model runs on: by default one forward and backward per target (a batch of
    #: the image, one per target).
    cost: ClassVar[Cost] = Cost("targets", lambda c: c.targets)
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

    def images(self, inputs: CostInputs) -> int:
        """Images the model runs on for ``inputs``: the cost a caller bounds; a noise tunnel
        runs the method once per sample."""
        once = self.cost.images(inputs)
        return once * inputs.samples if self.smoothable else once


class LayerGradientMethod(AttributionMethod):
    """A gradient method at a layer (Grad-CAM and its relatives): it needs ``layer``, reads
    the gradient at the image itself, and takes a noise tunnel."""

    options = ("layer",)
    smoothable = True
    needs_layer = True
    local = True


_METHODS: dict[str, AttributionMethod] = {}
M = TypeVar("M", bound=type[AttributionMethod])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"attribution method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def methods() -> list[AttributionMethod]:
    """The registered methods, sorted by name."""
    return [_METHODS[name] for name in method_names()]


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
