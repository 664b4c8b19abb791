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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnviz.axes import parse_axes_table
from cnnviz.errors import (
    ModelLoadError,
    ModelNameTakenError,
    RegistryConfigError,
    UnknownModelError,
)
from cnnviz.layers import LayerIndex, layer_index
from cnnviz.models.catalog import BUILTIN_MODEL, Catalog, DigestCache, ModelsFile
from cnnviz.models.loading import build_model
from cnnviz.models.sources import hf_defaults, require_extra
from cnnviz.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from cnnviz.models.store import ModelStore
from cnnviz.reload import DEFAULT_POLL_INTERVAL_S

__all__ = ["BUILTIN_MODEL", "LoadedModel", "ModelRegistry", "ModelSpec"]


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
        origin="builtin",
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


_SOURCES = ("arch", "factory", "timm", "hf")
ENTRY_KEYS = frozenset(
    {*_SOURCES, "weights", "input_size", "channels", "mean", "std", "labels", "description"}
    | {"kwargs", "axes"}
)
"""The keys of a ``[models.NAME]`` table."""


def _parse_entry(name: str, entry: Mapping[str, Any], base: Path) -> ModelSpec:
    """One ``[models.NAME]`` table to a spec; raises RegistryConfigError naming the cause."""
    if not isinstance(entry, Mapping):
        raise RegistryConfigError(f"[models.{name}] must be a table")
    known = ENTRY_KEYS
    unknown = sorted(set(entry) - known)
    if unknown:
        raise RegistryConfigError(f"unknown keys {unknown}; valid keys: {sorted(known)}")
    given = [key for key in _SOURCES if entry.get(key) is not None]
    if len(given) != 1:
        raise RegistryConfigError(
            f"give exactly one of {', '.join(map(repr, _SOURCES))}"
            + (f"; got {', '.join(map(repr, given))}" if given else "")
        )
    source = given[0]
    if not isinstance(entry[source], str) or not entry[source]:
        raise RegistryConfigError(f"{source!r} must be a non-empty string")
    arch, factory = entry.get("arch"), entry.get("factory")
    timm_name, hf = entry.get("timm"), entry.get("hf")
    if arch is not None:
        from torchvision.models import list_models

        if arch not in list_models():
            raise RegistryConfigError(
                f"unknown arch {arch!r}; torchvision architectures include "
                f"{', '.join(sorted(m for m in list_models() if '_' not in m)[:20])}, ..."
            )
    if factory is not None and ":" not in factory:
        raise RegistryConfigError(f"factory must be 'package.module:callable', got {factory!r}")
    if source in ("timm", "hf"):
        require_extra(source)
    defaults: dict[str, Any] = {}
    if hf is not None:
        directory = Path(hf).expanduser()
        directory = directory if directory.is_absolute() else base / directory
        hf = str(directory)
        # What the directory says fills what the entry leaves out ("absent" is not given).
        defaults = hf_defaults(directory)
        for key in ("input_size", "mean", "std"):
            if key not in entry and key not in defaults:
                raise RegistryConfigError(
                    f"{key!r} is not given, and {hf!r} has no preprocessor_config.json that "
                    "says it; give it in the entry"
                )
        entry = {**defaults, **entry}
    weights = entry.get("weights")
    if hf is not None and weights is None:
        pass  # the directory holds them
    elif not isinstance(weights, str) or not weights:
        raise RegistryConfigError(
            "'weights' is required: a file path, 'DEFAULT' (torchvision's weights) or 'random'"
        )
    elif arch is None and weights != "random" and not _looks_like_path(weights):
        raise RegistryConfigError(
            f"a {source} model needs a weights file path (or 'random'); named weights are "
            "torchvision's"
        )
    if weights is not None and _looks_like_path(weights):
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
    default_mean = IMAGENET_MEAN if channels == 3 else (0.5,)
    default_std = IMAGENET_STD if channels == 3 else (0.5,)
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
        timm=timm_name,
        hf=hf,
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

    A registry made :meth:`from_file` re-reads its TOML file when it changes (polled at most
    every ``poll_interval_s``), and the specs of its :class:`~cnnviz.models.store.ModelStore`
    when they change. A bad edit keeps the last good entries and is reported in
    :attr:`problems`. A model whose spec changed is built again at its next use; a caller
    that holds the old :class:`LoadedModel` (a running job) goes on with it.
    """

    def __init__(
        self,
        specs: Mapping[str, ModelSpec] | None = None,
        errors: Mapping[str, str] | None = None,
        device: torch.device | str = "cpu",
        *,
        models_file: ModelsFile | None = None,
        store: ModelStore | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self._fixed = (
            {BUILTIN_MODEL: _builtin_spec(), **(specs or {})},
            dict(errors or {}),
        )
        self.device = torch.device(device)
        self._catalog = Catalog(models_file, store, ModelRegistry._parse_stored, poll_interval_s)
        self._specs, self._errors = self._catalog.merged(*self._fixed)
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._digests = DigestCache()

    @classmethod
    def from_file(
        cls,
        path: str | Path | None,
        device: torch.device | str = "cpu",
        *,
        store: str | Path | ModelStore | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> ModelRegistry:
        """The built-in model plus the models of a TOML file (``None``: the built-in only)
        and of a model store directory (``None``: none).

        A file that cannot be read or parsed at start raises :class:`RegistryConfigError`;
        a bad entry is kept as an error of that model only.
        """
        models_file = ModelsFile.read(Path(path), _parse_entry) if path is not None else None
        if store is not None and not isinstance(store, ModelStore):
            store = ModelStore(store)
        return cls(
            device=device, models_file=models_file, store=store, poll_interval_s=poll_interval_s
        )

    @staticmethod
    def _parse_stored(name: str, table: Mapping[str, Any], sha256: str) -> ModelSpec:
        # The stored table's weights path is absolute: no base directory applies.
        return replace(_parse_entry(name, table, Path(".")), sha256=sha256, origin="store")

    def refresh(self, force: bool = False) -> None:
        """Read the models file and the store again if they changed (at most every poll
        interval, unless ``force``); forget the loaded models whose spec changed."""
        if not self._catalog.refresh(force):
            return
        with self._lock:
            specs, errors = self._catalog.merged(*self._fixed)
            for name, loaded in list(self._loaded.items()):
                if specs.get(name) != loaded.spec:
                    del self._loaded[name]
            self._specs, self._errors = specs, errors

    @property
    def warnings(self) -> list[str]:
        """Entries of the models file that are ignored, with why."""
        return self._catalog.warnings

    @property
    def problems(self) -> list[str]:
        """What went wrong when the models file or the store was last read again (the last
        good entries stay in use meanwhile); empty when all is well."""
        self.refresh()
        return self._catalog.problems

    @property
    def errors(self) -> dict[str, str]:
        """The models that cannot be used, with why."""
        self.refresh()
        return self._errors

    @property
    def store(self) -> ModelStore | None:
        return self._catalog.store

    def __iter__(self) -> Iterator[ModelSpec]:
        self.refresh()
        return iter(list(self._specs.values()))

    def names(self) -> list[str]:
        """Every model name, usable or not."""
        self.refresh()
        return sorted({*self._specs, *self._errors})

    def spec(self, name: str) -> ModelSpec:
        """The spec of ``name``; UnknownModelError or ModelLoadError (a bad entry) otherwise."""
        self.refresh()
        errors, specs = self._errors, self._specs
        if name in errors:
            raise ModelLoadError(name, errors[name])
        try:
            return specs[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` has been loaded in this process."""
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        """The loaded model ``name``, built and its weights read on first use."""
        spec = self.spec(name)
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.spec == spec:
            return loaded
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            loaded = self._loaded.get(name)
            if loaded is None or loaded.spec != spec:
                module = build_model(spec).to(self.device).eval().requires_grad_(False)
                index = layer_index(module, spec.input_shape, name, spec.axes)
                loaded = LoadedModel(spec, module, index, self.device)
                with self._lock:
                    if self._specs.get(name) == spec:  # not replaced meanwhile
                        self._loaded[name] = loaded
        return loaded

    def weights_digest(self, name: str) -> str | None:
        """The sha256 of the weights ``name`` runs: of its weights file, or its registered
        digest; None where there is no file (``random``, torchvision's named weights)."""
        spec = self.spec(name)
        return spec.sha256 or self._digests.of(spec)

    def register(self, name: str, table: Mapping[str, Any], data: bytes) -> ModelSpec:
        """Keep a model in the store (see :meth:`ModelStore.register`): its spec.

        Raises :class:`ModelNameTakenError` for the name of the built-in model or of the
        models file, InvalidUploadError for a spec or weights refused.
        """
        store = self._require_store()
        self._check_free(name)
        store.register(name, table, data, self._parse_upload)
        self.refresh(force=True)
        return self.spec(name)

    def unregister(self, name: str) -> None:
        """Remove a model of the store; UnknownModelError if the store has none of that name."""
        store = self._require_store()
        self._check_free(name)
        if not store.delete(name):
            raise UnknownModelError(name, [s.name for s in self if s.origin == "store"])
        self.refresh(force=True)

    def _parse_upload(self, name: str, table: Mapping[str, Any]) -> ModelSpec:
        return _parse_entry(name, table, Path("."))

    def _require_store(self) -> ModelStore:
        if self._catalog.store is None:
            raise RegistryConfigError("no model store is configured")
        return self._catalog.store

    def _check_free(self, name: str) -> None:
        self.refresh(force=True)
        holder = self._catalog.holder(name, self._fixed)
        if holder is not None:
            raise ModelNameTakenError(name, holder)
