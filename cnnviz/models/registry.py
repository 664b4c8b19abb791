"""The model registry: a name to a model and everything needed to feed it.

The registry always holds the built-in ``shapes`` model. Operators add models with a TOML file,
one table per model::

    [models.r18]
    arch = "resnet18"                          # or: factory = "mypkg.nets:build"
    weights = "/srv/weights/r18.safetensors"   # or "DEFAULT" (torchvision's), or "random"
    input_size = [224, 224]
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    axes = {"blocks.*" = {axes = "tokens", token_grid = [14, 14], prefix_tokens = 1}}

``axes`` declares the axes of layers by shell-style pattern (see :mod:`cnnviz.axes`); a
declaration wins over what the graph shows. A bad entry is reported with its cause and never
takes the other models down: entries that cannot be parsed are kept as errors and raise
:class:`ModelLoadError` when used, and weights are only read at first use. Models are loaded
lazily, once per process.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnviz.axes import AxesDecl, parse_axes_table
from cnnviz.errors import ModelLoadError, RegistryConfigError, UnknownModelError
from cnnviz.layers import LayerIndex, layer_index
from cnnviz.models.loading import build_model

__all__ = ["BUILTIN_MODEL", "LoadedModel", "ModelRegistry", "ModelSpec"]

BUILTIN_MODEL = "shapes"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model and feed it.

    Exactly one of ``arch`` (a torchvision architecture name), ``factory``
    (``"package.module:callable"``) or ``builtin`` says what to build. ``weights`` is a file
    path (safetensors, or a state dict readable with ``torch.load(weights_only=True)``),
    ``"DEFAULT"`` or another torchvision weights name, or ``"random"``.
    """

    name: str
    arch: str | None = None
    factory: str | None = None
    builtin: bool = False
    weights: str | None = None
    input_size: tuple[int, int] = (224, 224)
    channels: int = 3
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    labels: tuple[str, ...] = ()
    description: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, AxesDecl] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return (self.channels, *self.input_size)


@dataclass(frozen=True)
class LoadedModel:
    """A built model in eval mode with frozen weights, on its device, and its layer index."""

    spec: ModelSpec
    module: nn.Module
    index: LayerIndex
    device: torch.device


def _builtin_spec() -> ModelSpec:
    from cnnviz.data.shapes import CLASSES
    from cnnviz.models.shapes import INPUT_SIZE, MEAN, STD

    return ModelSpec(
        name=BUILTIN_MODEL,
        builtin=True,
        weights="builtin",
        input_size=INPUT_SIZE,
        channels=3,
        mean=MEAN,
        std=STD,
        labels=CLASSES,
        description="Small CNN trained by cnnviz on generated shapes and oriented textures",
    )


def _float_tuple(
    entry: Mapping[str, Any], key: str, default: tuple[float, ...]
) -> tuple[float, ...]:
    value = entry.get(key, default)
    if not isinstance(value, list | tuple) or not all(isinstance(v, int | float) for v in value):
        raise RegistryConfigError(f"{key} must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _parse_entry(name: str, entry: Mapping[str, Any], base: Path) -> ModelSpec:
    """One ``[models.NAME]`` table to a spec; raises RegistryConfigError naming the cause."""
    if not isinstance(entry, Mapping):
        raise RegistryConfigError(f"[models.{name}] must be a table")
    known = {
        "arch",
        "factory",
        "weights",
        "input_size",
        "channels",
        "mean",
        "std",
        "labels",
        "description",
        "kwargs",
        "axes",
    }
    unknown = sorted(set(entry) - known)
    if unknown:
        raise RegistryConfigError(f"unknown keys {unknown}; valid keys: {sorted(known)}")
    arch, factory = entry.get("arch"), entry.get("factory")
    if (arch is None) == (factory is None):
        raise RegistryConfigError("give exactly one of 'arch' or 'factory'")
    if arch is not None:
        from torchvision.models import list_models

        if arch not in list_models():
            raise RegistryConfigError(
                f"unknown arch {arch!r}; torchvision architectures include "
                f"{', '.join(sorted(m for m in list_models() if '_' not in m)[:20])}, ..."
            )
    if factory is not None and (not isinstance(factory, str) or ":" not in factory):
        raise RegistryConfigError(f"factory must be 'package.module:callable', got {factory!r}")
    weights = entry.get("weights")
    if not isinstance(weights, str) or not weights:
        raise RegistryConfigError(
            "'weights' is required: a file path, 'DEFAULT' (torchvision's weights) or 'random'"
        )
    if factory is not None and weights != "random" and not _looks_like_path(weights):
        raise RegistryConfigError("a factory model needs a weights file path (or 'random')")
    if _looks_like_path(weights):
        path = Path(weights).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise RegistryConfigError(f"weights file {str(path)!r} does not exist")
        weights = str(path)
    size = entry.get("input_size", [224, 224])
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and 8 <= v <= 4096 for v in size)
    ):
        raise RegistryConfigError(f"input_size must be [height, width] in 8..4096, got {size!r}")
    channels = entry.get("channels", 3)
    if channels not in (1, 3):
        raise RegistryConfigError(f"channels must be 1 or 3, got {channels!r}")
    default_mean = _IMAGENET_MEAN if channels == 3 else (0.5,)
    default_std = _IMAGENET_STD if channels == 3 else (0.5,)
    mean = _float_tuple(entry, "mean", default_mean)
    std = _float_tuple(entry, "std", default_std)
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise RegistryConfigError(
            f"mean and std need {channels} values each (std > 0), got {mean} and {std}"
        )
    labels = entry.get("labels", [])
    kwargs = entry.get("kwargs", {})
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise RegistryConfigError("labels must be a list of strings")
    if not isinstance(kwargs, Mapping):
        raise RegistryConfigError("kwargs must be a table")
    return ModelSpec(
        name=name,
        arch=arch,
        factory=factory,
        weights=weights,
        input_size=(size[0], size[1]),
        channels=channels,
        mean=mean,
        std=std,
        labels=tuple(labels),
        description=str(entry.get("description", "")),
        kwargs=dict(kwargs),
        axes=parse_axes_table(entry.get("axes", {})),
    )


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or "." in weights or weights.startswith("~")


class ModelRegistry:
    """Names to models, loaded lazily and once; safe to share between threads.

    ``device`` is where loaded models live. Entries that could not be parsed are kept in
    :attr:`errors` and raise :class:`ModelLoadError` on use, so one bad table leaves the
    others working.
    """

    def __init__(
        self,
        specs: Mapping[str, ModelSpec] | None = None,
        errors: Mapping[str, str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        builtin = _builtin_spec()
        self._specs: dict[str, ModelSpec] = {builtin.name: builtin, **(specs or {})}
        self.errors: dict[str, str] = dict(errors or {})
        self.warnings: list[str] = []
        self.device = torch.device(device)
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: str | Path | None, device: torch.device | str = "cpu"
    ) -> ModelRegistry:
        """The built-in model plus the models of a TOML file (``None``: the built-in only).

        A file that cannot be read or parsed raises :class:`RegistryConfigError`; a bad entry
        is kept as an error of that model only.
        """
        if path is None:
            return cls(device=device)
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryConfigError(f"cannot read models file {str(path)!r}: {exc}") from exc
        tables = document.get("models", {})
        if not isinstance(tables, Mapping):
            raise RegistryConfigError(f"{str(path)!r}: 'models' must be a table of tables")
        specs: dict[str, ModelSpec] = {}
        errors: dict[str, str] = {}
        warnings: list[str] = []
        for name, entry in tables.items():
            if name == BUILTIN_MODEL:
                # The built-in model keeps its name whatever the file says.
                warnings.append(
                    f"[models.{name}] in {str(path)!r} is ignored: the name is reserved for "
                    "the built-in model"
                )
                continue
            try:
                specs[name] = _parse_entry(name, entry, path.parent)
            except RegistryConfigError as exc:
                errors[name] = f"[models.{name}] in {str(path)!r}: {exc}"
        registry = cls(specs, errors, device)
        registry.warnings = warnings
        return registry

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        """Every model name, usable or not."""
        return sorted({*self._specs, *self.errors})

    def spec(self, name: str) -> ModelSpec:
        """The spec of ``name``; UnknownModelError or ModelLoadError (a bad entry) otherwise."""
        if name in self.errors:
            raise ModelLoadError(name, self.errors[name])
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` has been loaded in this process."""
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        """The loaded model ``name``, built and its weights read on first use."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        spec = self.spec(name)
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            loaded = self._loaded.get(name)
            if loaded is None:
                module = build_model(spec).to(self.device).eval().requires_grad_(False)
                index = layer_index(module, spec.input_shape, name, spec.axes)
                loaded = LoadedModel(spec, module, index, self.device)
                self._loaded[name] = loaded
        return loaded
