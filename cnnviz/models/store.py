"""The model store: models registered at run time, in a directory every process shares.

::

    <root>/weights/<sha256>.safetensors   the weights, named by their digest
    <root>/specs/<name>.json              {"spec": {...a [models.NAME] table...},
                                           "sha256": "...", "registered_at": 1765000000.0}

A registration is checked before anything is kept: the file must be safetensors (never a
pickle), hold tensors that load into the architecture with ``strict=True``, and the model
must run a forward pass on an input of its size. Then the weights are written (to a temporary
name, renamed into place), and only then the spec: a process that sees a spec always finds
its weights. Every process reads ``specs/`` again when it changes (see
:class:`~cnnviz.models.registry.ModelRegistry`), and checks the weights' sha256 before it
builds the model.

A spec names an allowlisted architecture only: ``arch`` (torchvision) or ``timm``, never a
factory (an import path runs code) and never a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cnnviz.errors import InvalidArgumentError, ModelLoadError, RegistryConfigError
from cnnviz.models.spec import ModelSpec

__all__ = ["NAME_PATTERN", "InvalidUploadError", "ModelStore", "default_model_store"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A registered model's name: it is a file name in the store and a path segment of the API."""

_REFUSED_KEYS = {
    "factory": "an import path runs code; register an 'arch' (torchvision) or 'timm' model",
    "hf": "a directory is not uploaded; put hf models in the models file",
    "weights": "the weights are the upload's 'weights' part",
}
# What a safetensors header may take: its JSON lists every tensor, a few MiB at the most.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def default_model_store() -> Path:
    """The store's default directory: ``$XDG_DATA_HOME/cnnviz/models`` (by default
    ``~/.local/share/cnnviz/models``), beside the service's other data."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "cnnviz" / "models"


class InvalidUploadError(InvalidArgumentError):
    """A registration refused: a spec the store does not take, or weights that do not fit."""

    code = "invalid_model"


def _is_safetensors(data: bytes) -> str | None:
    """Why ``data`` is not a safetensors file (None: its header reads as one)."""
    if data[:2] == b"PK":
        return (
            "it is a zip archive, the format of torch.save, which holds a pickle; only "
            "safetensors is accepted: save with safetensors.torch.save_file(model.state_dict(), "
            "path)"
        )
    if data[:1] == b"\x80":
        return (
            "it is a pickle, which could run code when read; only safetensors is accepted: "
            "save with safetensors.torch.save_file(model.state_dict(), path)"
        )
    if len(data) < 8:
        return "it is too short to be a safetensors file"
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER_BYTES, len(data) - 8):
        return "it is not a safetensors file (its first 8 bytes are no header length)"
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "it is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "it is not a safetensors file (its header is not a JSON object)"
    return None


def _plain(value: object) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class ModelStore:
    """The models registered at run time under ``root`` (created on first registration)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.specs_dir = self.root / "specs"
        self.weights_dir = self.root / "weights"

    def weights_path(self, sha256: str) -> Path:
        return self.weights_dir / f"{sha256}.safetensors"

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """What changes when a spec is added, replaced or removed (a few stats, no reads)."""
        try:
            entries = list(os.scandir(self.specs_dir))
        except FileNotFoundError:
            return ()
        stamp = []
        for entry in entries:
            if entry.name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat()
                    stamp.append((entry.name, info.st_mtime_ns, info.st_size))
        return tuple(sorted(stamp))

    def tables(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Every stored model as a ``[models.NAME]`` table (its ``weights`` the stored file)
        with its ``sha256``; and the specs that cannot be read, with why."""
        tables: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for path in sorted(self.specs_dir.glob("*.json")) if self.specs_dir.is_dir() else []:
            name = path.stem
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                table = dict(stored["spec"])
                sha256 = str(stored["sha256"])
            except FileNotFoundError:
                continue  # removed while listed
            except (OSError, ValueError, KeyError, TypeError) as exc:
                errors[name] = f"stored spec {str(path)!r} cannot be read: {exc}"
                continue
            table["weights"] = str(self.weights_path(sha256))
            tables[name] = {"table": table, "sha256": sha256}
        return tables, errors

    @staticmethod
    def check_table(table: object) -> dict[str, Any]:
        """The spec of an upload, refused (InvalidUploadError) if it names what the store
        does not take."""
        if not isinstance(table, Mapping):
            raise InvalidUploadError(
                "spec must be a JSON object with the keys of a [models.NAME] table"
            )
        for key, why in _REFUSED_KEYS.items():
            if key in table:
                raise InvalidUploadError(f"spec may not give {key!r}: {why}")
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, Mapping) or not all(_plain(value) for value in kwargs.values()):
            raise InvalidUploadError(
                "spec's kwargs must be an object of plain values (numbers, strings, booleans, "
                "and lists of them): they are arguments of the architecture, never objects"
            )
        if ("arch" in table) == ("timm" in table):
            raise InvalidUploadError(
                "spec needs exactly one of 'arch' (a torchvision architecture) or 'timm' "
                "(a timm model name)"
            )
        return dict(table)

    def register(
        self,
        name: str,
        table: Mapping[str, Any],
        data: bytes,
        parse: Callable[[str, Mapping[str, Any]], ModelSpec],
    ) -> str:
        """Check an upload and keep it: the sha256 of its weights.

        ``parse(name, table)`` is the registry's parser of a ``[models.NAME]`` table. Raises
        InvalidUploadError naming why when the spec or the weights do not do; then nothing
        is kept. A name already stored is replaced.
        """
        from cnnviz.models.loading import build_model

        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidUploadError(f"model name {name!r} must match {NAME_PATTERN}")
        table = self.check_table(table)
        why = _is_safetensors(data)
        if why is not None:
            raise InvalidUploadError(f"the weights were refused: {why}")
        sha256 = hashlib.sha256(data).hexdigest()
        with tempfile.TemporaryDirectory(prefix="cnnviz-upload-") as scratch:
            # Checked from a scratch copy: nothing reaches the store before it passed.
            candidate = Path(scratch) / "weights.safetensors"
            candidate.write_bytes(data)
            try:
                spec = parse(name, {**table, "weights": str(candidate)})
            except RegistryConfigError as exc:
                raise InvalidUploadError(f"spec: {exc}") from None
            try:
                model = build_model(spec)
                with torch.inference_mode():
                    model(torch.zeros(1, *spec.input_shape))
            except ModelLoadError as exc:
                raise InvalidUploadError(f"the weights were refused: {exc.cause}") from None
            except Exception as exc:  # the forward pass of an architecture we did not write
                raise InvalidUploadError(
                    f"the model does not run on a {list(spec.input_shape)} input: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
        _write_atomically(self.weights_path(sha256), data)
        stored = {"spec": table, "sha256": sha256, "registered_at": time.time()}
        previous = self._sha256_of(name)
        _write_atomically(self.specs_dir / f"{name}.json", json.dumps(stored).encode())
        if previous is not None and previous != sha256:
            self._drop_unused(previous)
        return sha256

    def delete(self, name: str) -> bool:
        """Remove a registered model (and its weights, unless another model uses them)."""
        if not re.fullmatch(NAME_PATTERN, name):
            return False
        sha256 = self._sha256_of(name)
        try:
            os.unlink(self.specs_dir / f"{name}.json")
        except FileNotFoundError:
            return False
        if sha256 is not None:
            self._drop_unused(sha256)
        return True

    def _sha256_of(self, name: str) -> str | None:
        try:
            stored = json.loads((self.specs_dir / f"{name}.json").read_text(encoding="utf-8"))
            return str(stored["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _drop_unused(self, sha256: str) -> None:
        # A process that already built the model keeps it in memory: a job running on it
        # finishes on the weights it started with.
        tables, _ = self.tables()
        if all(entry["sha256"] != sha256 for entry in tables.values()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.weights_path(sha256))
