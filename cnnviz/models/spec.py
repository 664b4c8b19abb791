"""What a model is and how it is fed: :class:`ModelSpec`, one registry entry. Here, apart from
the registry, so that the catalog, the loader and the store that read it import it plainly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from cnnviz.axes import AxesDecl
from cnnviz.imaging.preprocess import Fit, denormalize, normalize, preprocess

__all__ = ["ModelSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model and feed it.

    Exactly one of ``arch`` (a torchvision architecture name), ``factory``
    (``"package.module:callable"``), ``timm`` (a timm model name), ``hf`` (a Hugging Face
    model directory) or ``builtin`` says what to build. ``weights`` is a file path
    (safetensors, or a state dict readable with ``torch.load(weights_only=True)``),
    ``"DEFAULT"`` or another torchvision weights name, or ``"random"``; None for an ``hf``
    model whose directory holds them. ``sha256`` is the digest of the weights file of a
    model registered at run time (checked before its weights are used).
    """

    name: str
    arch: str | None = None
    factory: str | None = None
    timm: str | None = None
    hf: str | None = None
    builtin: bool = False
    weights: str | None = None
    input_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    labels: tuple[str, ...] = ()
    description: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, AxesDecl] = field(default_factory=dict)
    sha256: str | None = None
    origin: Literal["builtin", "config", "store"] = "config"

    @property
    def source(self) -> str:
        """What builds it: ``builtin``, the arch, ``timm:NAME``, ``hf:DIR`` or the factory."""
        if self.builtin:
            return "builtin"
        if self.timm is not None:
            return f"timm:{self.timm}"
        if self.hf is not None:
            return f"hf:{self.hf}"
        return self.arch or self.factory or "unknown"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return (self.channels, *self.input_size)

    def preprocess(self, image: Image.Image, fit: Fit = "crop") -> torch.Tensor:
        """``image`` as this model's input batch of one: ``(1, channels, *input_size)``
        float32, normalised (:func:`cnnviz.imaging.preprocess.preprocess`)."""
        return preprocess(
            image,
            size=self.input_size,
            channels=self.channels,
            mean=self.mean,
            std=self.std,
            fit=fit,
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``(N, C, H, W)`` (or ``(C, H, W)``) in ``[0, 1]`` as this model's input,
        on ``x``'s device (:func:`cnnviz.imaging.preprocess.normalize`)."""
        return normalize(x, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs ``(N, C, H, W)`` (or ``(C, H, W)``) back to pixels in ``[0, 1]``,
        float32 on the CPU: what :meth:`preprocess` normalised."""
        return denormalize(x.detach().float().cpu(), self.mean, self.std).clamp(0, 1)
