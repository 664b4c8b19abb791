"""Where a registry's entries come from, read again when they change.

- The models file (TOML): re-read when its stamp changes. A file that cannot be read or
  parsed keeps every last good entry; an entry that turns bad keeps its last good spec. Both
  are reported in :attr:`Catalog.problems` (and logged) until a later edit fixes them.
- The model store: its ``specs/`` directory is listed again when it changes, so a model
  registered by another process (the API, when this is a worker) is seen without a restart.

The built-in model and the models file hold their names: a stored model of the same name is
hidden, and said so.
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnviz.errors import RegistryConfigError
from cnnviz.models.spec import ModelSpec
from cnnviz.models.store import ModelStore
from cnnviz.reload import Watched, file_stamp

__all__ = ["BUILTIN_MODEL", "Catalog", "DigestCache", "ModelsFile"]

log = logging.getLogger(__name__)

ParseEntry = Callable[[str, Mapping[str, Any], Path], ModelSpec]
ParseStored = Callable[[str, Mapping[str, Any], str], ModelSpec]
BUILTIN_MODEL = "shapes"
_BUILTIN = BUILTIN_MODEL


@dataclass
class ModelsFile:
    """The ``[models.*]`` tables of a TOML file as specs, errors and warnings."""

    path: Path
    parse: ParseEntry
    stamp: tuple[int, int, int] | None
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, parse: ParseEntry) -> ModelsFile:
        """Read and parse the file; RegistryConfigError if it cannot be read or parsed."""
        stamp = file_stamp(path)  # before the read: a change during it is seen next time
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryConfigError(f"cannot read models file {str(path)!r}: {exc}") from exc
        tables = document.get("models", {})
        if not isinstance(tables, Mapping):
            raise RegistryConfigError(f"{str(path)!r}: 'models' must be a table of tables")
        read = cls(path, parse, stamp)
        for name, entry in tables.items():
            if name == _BUILTIN:
                # The built-in model keeps its name whatever the file says.
                read.warnings.append(
                    f"[models.{name}] in {str(path)!r} is ignored: the name is reserved for "
                    "the built-in model"
                )
                continue
            try:
                read.specs[name] = parse(name, entry, path.parent)
            except RegistryConfigError as exc:
                read.errors[name] = f"[models.{name}] in {str(path)!r}: {exc}"
        return read


class Catalog:
    """The models file and the store of one registry, and what their last reads said."""

    def __init__(
        self,
        models_file: ModelsFile | None,
        store: ModelStore | None,
        parse_stored: ParseStored,
        poll_interval_s: float,
    ) -> None:
        self.file = models_file
        self.store = store
        self._parse_stored = parse_stored
        self._interval_s = poll_interval_s
        self._watch = (
            Watched(models_file.path, models_file.stamp, poll_interval_s)
            if models_file is not None
            else None
        )
        self._file_problems: list[str] = []
        self._store_stamp: object = None
        self._store_next = 0.0
        self.store_specs: dict[str, ModelSpec] = {}
        self.store_errors: dict[str, str] = {}
        self._store_problems: list[str] = []
        if store is not None:
            self._read_store(store)

    @property
    def warnings(self) -> list[str]:
        return list(self.file.warnings) if self.file is not None else []

    @property
    def problems(self) -> list[str]:
        return [*self._file_problems, *self._store_problems]

    def refresh(self, force: bool = False) -> bool:
        """Read what changed again; whether anything was read."""
        changed = False
        if self._watch is not None and (self._watch.changed() or force):
            self._reread_file()
            changed = True
        now = time.monotonic()
        if self.store is not None and (force or now >= self._store_next):
            self._store_next = now + self._interval_s
            if self.store.stamp() != self._store_stamp:
                self._read_store(self.store)
                changed = True
        return changed

    def _reread_file(self) -> None:
        assert self.file is not None
        old = self.file
        try:
            new = ModelsFile.read(old.path, old.parse)
        except RegistryConfigError as exc:
            problem = f"{exc}; the last good entries stay in use"
            log.warning("%s", problem)
            self._file_problems = [problem]
            return
        problems = []
        for name in list(new.errors):
            if name in old.specs:  # was good, turned bad: keep the last good spec
                problem = f"{new.errors.pop(name)}; its last good entry stays in use"
                log.warning("%s", problem)
                problems.append(problem)
                new.specs[name] = old.specs[name]
        for name in new.specs.keys() - old.specs.keys() | (old.specs.keys() - new.specs.keys()):
            change = "added" if name in new.specs else "removed"
            log.info("models file %s: model %r %s", old.path, name, change)
        self.file, self._file_problems = new, problems

    def _read_store(self, store: ModelStore) -> None:
        self._store_stamp = store.stamp()
        tables, errors = store.tables()
        specs: dict[str, ModelSpec] = {}
        for name, entry in tables.items():
            try:
                specs[name] = self._parse_stored(name, entry["table"], entry["sha256"])
            except RegistryConfigError as exc:
                errors[name] = f"registered model {name!r}: {exc}"
        self.store_specs, self.store_errors = specs, errors

    def holder(self, name: str, fixed: tuple[Mapping[str, Any], Mapping[str, Any]]) -> str | None:
        """Who holds ``name`` other than the store: ``the built-in model``, ``the models
        file``; None if no one."""
        if name == _BUILTIN:
            return "the built-in model"
        if name in fixed[0] or name in fixed[1]:
            return "the registry's own entries"
        if self.file is not None and (name in self.file.specs or name in self.file.errors):
            return f"the models file {str(self.file.path)!r}"
        return None

    def merged(
        self, fixed_specs: Mapping[str, ModelSpec], fixed_errors: Mapping[str, str]
    ) -> tuple[dict[str, ModelSpec], dict[str, str]]:
        """Every spec and every error: built-in and given, then the file's, then the store's
        (whose names the others hold are hidden, and reported)."""
        specs = dict(fixed_specs)
        errors = dict(fixed_errors)
        if self.file is not None:
            specs.update(self.file.specs)
            errors.update(self.file.errors)
        hidden = []
        for name, spec in self.store_specs.items():
            if name in specs or name in errors:
                hidden.append(name)
                continue
            specs[name] = spec
        for name, error in self.store_errors.items():
            if name not in specs and name not in errors:
                errors[name] = error
        self._store_problems = [
            f"registered model {name!r} is hidden: the name is held by another entry"
            for name in hidden
        ]
        return specs, errors


class DigestCache:
    """The sha256 of a spec's weights file, computed once per version of the file."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int] | None, str]] = {}

    def of(self, spec: ModelSpec) -> str | None:
        from cnnviz.models.loading import file_digest

        path = self._path(spec)
        if path is None:
            return None
        stamp = file_stamp(path)
        if stamp is None:
            return None
        key = os.fspath(path)
        known = self._known.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        digest = file_digest(path)
        self._known[key] = (stamp, digest)
        return digest

    @staticmethod
    def _path(spec: ModelSpec) -> Path | None:
        if spec.builtin:
            from cnnviz.models.shapes import WEIGHTS_PATH

            return WEIGHTS_PATH
        if spec.weights is not None and Path(spec.weights).is_absolute():
            return Path(spec.weights)
        if spec.hf is not None and spec.weights is None:
            saved = Path(spec.hf) / "model.safetensors"
            return saved if saved.is_file() else None
        return None
