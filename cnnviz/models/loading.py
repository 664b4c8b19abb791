"""Building a registered model and reading its weights, safely.

Weights come from a safetensors file, a state dict read with ``torch.load(weights_only=True)``,
torchvision's named weights, or nowhere (``"random"``, only when asked for). Nothing is ever
unpickled with ``weights_only=False``. Every failure becomes a :class:`ModelLoadError` that
names the model and the cause.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnviz.errors import ModelLoadError
from cnnviz.models.sources import HfLogits, build_hf, build_timm
from cnnviz.models.spec import ModelSpec

__all__ = ["build_model", "check_digest", "file_digest", "read_state_dict"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch state dict (``weights_only=True``).

    A checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.
    Raises ValueError for a file that holds anything else.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save's format) warns before it is refused below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise ValueError(
            "the file is not a plain state dict: it holds pickled Python objects that only "
            "weights_only=False would load, which cnnviz never does; save model.state_dict() "
            "(or use safetensors) instead"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("the file is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _import_factory(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def _build(spec: ModelSpec) -> nn.Module:
    if spec.builtin:
        from cnnviz.models.shapes import load_shapes_net

        return load_shapes_net()
    if spec.timm is not None:
        model = build_timm(spec.timm, spec.kwargs)
    elif spec.hf is not None:
        model = build_hf(Path(spec.hf), spec.weights, spec.kwargs)
    elif spec.factory is not None:
        model = _import_factory(spec.factory)(**spec.kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"factory {spec.factory!r} returned {type(model).__name__}, not a Module"
            )
    else:
        from torchvision.models import get_model, get_model_weights

        assert spec.arch is not None
        weights = None
        if spec.weights is not None and spec.weights != "random" and "/" not in spec.weights:
            try:
                weights = get_model_weights(spec.arch)[spec.weights]
            except KeyError:
                choices = ["DEFAULT", *(w.name for w in get_model_weights(spec.arch))]
                raise ValueError(
                    f"unknown torchvision weights {spec.weights!r} for {spec.arch}; "
                    f"choose one of {choices}, a file path, or 'random'"
                ) from None
            try:
                return get_model(spec.arch, weights=weights, **spec.kwargs)
            except OSError as exc:  # URLError is an OSError: no network, or a blocked host
                raise RuntimeError(
                    f"torchvision weights {spec.weights!r} could not be downloaded ({exc}); "
                    "put the file in TORCH_HOME or give a local weights path"
                ) from exc
        model = get_model(spec.arch, weights=None, **spec.kwargs)
    if spec.weights and spec.weights != "random":
        if spec.sha256 is not None:
            check_digest(spec.weights, spec.sha256)
        state = read_state_dict(spec.weights)
        # A weights file of an hf model holds the classifier's own names, as saved.
        target = model.model if isinstance(model, HfLogits) else model
        target.load_state_dict(state, strict=True)
    return model


def file_digest(path: str | Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: str | Path, sha256: str) -> None:
    """Raise ValueError unless the file at ``path`` has this sha256."""
    found = file_digest(path)
    if found != sha256:
        raise ValueError(
            f"weights file {str(path)!r} has sha256 {found[:16]}…, not the {sha256[:16]}… it "
            "was registered with: the file changed or is damaged; register the model again"
        )


def build_model(spec: ModelSpec) -> nn.Module:
    """The module of ``spec`` with its weights, on the CPU, in eval mode."""
    try:
        return _build(spec).eval()
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure to build is this model's, reported with its cause
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, RuntimeError) and "size mismatch" in str(exc):
            cause = "weights do not match the architecture: " + _first_mismatch(str(exc))
        elif isinstance(exc, RuntimeError) and (
            "Missing key" in str(exc) or "Unexpected key" in str(exc)
        ):
            cause = "weights do not match the architecture: " + _first_key_error(str(exc))
        raise ModelLoadError(spec.name, cause) from exc


def _first_mismatch(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if "size mismatch" in line]
    return lines[0] if lines else message.splitlines()[0]


def _first_key_error(message: str) -> str:
    """The line of load_state_dict's message that names missing or unexpected keys, cut."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("Missing key", "Unexpected key")):
            return line if len(line) <= 300 else line[:300] + "…"
    return message.splitlines()[0]
