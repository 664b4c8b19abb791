"""Checkpoints people have: timm architectures and Hugging Face model directories.

Both are optional extras (``pip install 'cnnviz[timm]'``, ``'cnnviz[hf]'``). Without the
package, an entry that needs it is an error of that model only, named when the registry is
read, never an import error of the registry itself.

- ``timm = "convnext_tiny"``: ``timm.create_model(name, pretrained=False, **kwargs)`` (nothing
  is downloaded), then the weights file.
- ``hf = "/path/to/dir"``: ``AutoModelForImageClassification`` with ``local_files_only=True``
  and without ``trust_remote_code``, so only the architectures of the installed transformers
  can be built and no code from the directory ever runs. The module answers the logits
  tensor (a Hugging Face model returns a ``ModelOutput``). Weights come from the directory
  unless a weights file is given; the input size, mean, std, channels and labels an entry
  leaves out come from the directory's ``preprocessor_config.json`` and ``config.json``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnviz.errors import RegistryConfigError

__all__ = ["HfLogits", "build_hf", "build_timm", "hf_defaults", "require_extra"]

_EXTRA_PACKAGES = {"timm": "timm", "hf": "transformers"}
_TIMM_WEIGHT_KWARGS = frozenset(
    {"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}
)


def require_extra(source: str) -> None:
    """Raise RegistryConfigError when the package of the ``timm`` or ``hf`` source is absent."""
    package = _EXTRA_PACKAGES[source]
    if importlib.util.find_spec(package) is None:
        raise RegistryConfigError(
            f"the {source!r} source needs the {package} package, which is not installed; "
            f"install it with: pip install 'cnnviz[{source}]'"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryConfigError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise RegistryConfigError(f"{str(path)!r} is not a JSON object")
    return value


def _side(value: object) -> tuple[int, int] | None:
    """``[height, width]`` of a processor's ``size``/``crop_size`` entry, if it says one."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Mapping):
        if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
            return (value["height"], value["width"])
        if isinstance(value.get("shortest_edge"), int):
            edge = value["shortest_edge"]
            return (edge, edge)
    return None


def hf_defaults(directory: Path) -> dict[str, Any]:
    """What a Hugging Face directory says of its input: a TOML table's keys and values.

    ``input_size`` from the processor's ``crop_size`` (what the model sees), else its
    ``size``, else the model config's ``image_size``; ``mean``/``std`` from ``image_mean``
    and ``image_std`` (only when the processor normalizes); ``channels`` from
    ``num_channels``; ``labels`` from ``id2label``. Keys the directory does not say are
    absent. Raises RegistryConfigError for a directory without a ``config.json``.
    """
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise RegistryConfigError(
            f"{str(directory)!r} is not a Hugging Face model directory: it has no config.json "
            "(save one with model.save_pretrained(directory))"
        )
    config = _read_json(config_path)
    processor_path = directory / "preprocessor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else {}
    found: dict[str, Any] = {}
    size = _side(processor.get("crop_size")) if processor.get("do_center_crop", True) else None
    size = size or _side(processor.get("size")) or _side(config.get("image_size"))
    if size is not None:
        found["input_size"] = list(size)
    if processor.get("do_normalize", True):
        for key, ours in (("image_mean", "mean"), ("image_std", "std")):
            value = processor.get(key)
            if isinstance(value, list):
                found[ours] = value
    if config.get("num_channels") in (1, 3):
        found["channels"] = config["num_channels"]
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        try:
            order = sorted(id2label, key=int)
        except ValueError:
            order = []
        if order == [str(i) for i in range(len(order))]:
            found["labels"] = [str(id2label[i]) for i in order]
    return found


def build_timm(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``: the architecture, random."""
    import timm

    # Weights come from the entry's file only: nothing downloaded, no other file read.
    refused = sorted(_TIMM_WEIGHT_KWARGS & set(kwargs))
    if refused:
        raise ValueError(
            f"kwargs may not set {refused}: a timm model's weights are its entry's 'weights' file"
        )
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; timm names like it: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint}")
    model: nn.Module = timm.create_model(name, pretrained=False, **dict(kwargs))
    return model


class HfLogits(nn.Module):
    """A Hugging Face image classifier that answers its logits, ``(N, classes)``.

    The classifier is ``self.model``, so its layers are named ``model.<its own names>``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` normalized pixels to ``(N, classes)`` logits."""
        logits: torch.Tensor = self.model(pixel_values=x).logits
        return logits


def build_hf(directory: Path, weights: str | None, kwargs: Mapping[str, Any]) -> nn.Module:
    """The image classifier saved in ``directory``, answering logits (:class:`HfLogits`).

    With ``weights`` None the directory's own weights are read; with a file path, the
    architecture is built from the directory's config and that file's tensors loaded into it
    (``"random"``: none). Nothing is downloaded and no code from the directory runs.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    # Keyword arguments that would fetch, or run the directory's code, are not the entry's
    # to give.
    refused = sorted({"trust_remote_code", "local_files_only", "revision"} & set(kwargs))
    if refused:
        raise ValueError(f"kwargs may not set {refused}: hf models are local, without code")
    if weights is None:
        model = AutoModelForImageClassification.from_pretrained(
            str(directory), local_files_only=True, **dict(kwargs)
        )
    else:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True, **dict(kwargs))
        model = AutoModelForImageClassification.from_config(config)
    return HfLogits(model)
