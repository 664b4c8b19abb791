"""Image data sets: folders of images (ImageFolder trees give labels) and the built-in ``shapes``.

An image is addressed by its id: the file's path relative to the data set's root, with ``/``
separators (``circle/00012.png``). Only files found by scanning the root are addressable, so an
id with ``..``, an absolute path, or a symlink that leads out of the root names nothing.
Operators declare data sets in the same TOML file as models::

    [datasets.photos]
    path = "/srv/photos"          # found recursively; root/<label>/x.png gives labels
    description = "what it holds"

Files are only listed when a data set is opened; pixels are decoded when an image is read,
and an unreadable or corrupt file is then reported (:class:`~cnnviz.errors.InvalidImageError`)
so that a caller can skip and count it.
"""

from __future__ import annotations

import io
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cnnviz.errors import InvalidArgumentError, InvalidImageError, RegistryConfigError
from cnnviz.imaging.decode import decode_image

__all__ = [
    "BUILTIN_DATASET",
    "Dataset",
    "DatasetRegistry",
    "DatasetSpec",
    "EmptyDatasetError",
    "UnknownDatasetError",
    "UnknownImageError",
]

BUILTIN_DATASET = "shapes"
SHAPES_IMAGES = 2400  # 200 of each of the 12 classes
SHAPES_SEED = 20_240_613  # not the training seeds: exemplars come from images never trained on
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
MAX_PIXELS = 40_000_000


class UnknownDatasetError(InvalidArgumentError, LookupError):
    """A data set name that the registry does not hold."""

    code = "unknown_dataset"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown dataset {name!r}; known datasets: {', '.join(known)}", listing=("datasets",)
        )


class UnknownImageError(InvalidArgumentError, LookupError):
    """An image id that is not a file of the data set (traversal and escaping links included)."""

    code = "unknown_image"


class EmptyDatasetError(InvalidArgumentError):
    """A data set with no image in it (or none that can be read)."""

    code = "empty_dataset"


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: a folder (``path``) or the built-in generated set (``path`` None)."""

    name: str
    path: Path | None
    description: str = ""


class Dataset:
    """The images of one data set, listed once: ids in a stable order, labels, pixels.

    ``ids[i]`` is the id of image ``i``; ``targets[i]`` its label index into ``labels`` (or
    -1 without labels).
    """

    def __init__(self, spec: DatasetSpec, ids: list[str], labels: list[str], targets: list[int]):
        self.spec = spec
        self.ids = ids
        self.labels = labels
        self.targets = targets
        self._index = {image_id: i for i, image_id in enumerate(ids)}

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, image_id: str) -> int:
        """The index of ``image_id``; UnknownImageError for anything not listed."""
        index = self._index.get(image_id)
        if index is None:
            raise UnknownImageError(
                f"dataset {self.name!r} has no image {image_id!r}; an image id is a file's path "
                "relative to the dataset's root, as the exemplar results give it"
            )
        return index

    def image(self, index: int) -> Image.Image:
        """Image ``index``, decoded (RGB, L, ... as stored); InvalidImageError if unreadable."""
        raise NotImplementedError

    def encoded(self, index: int) -> tuple[bytes, str]:
        """Image ``index`` as PNG bytes (or the file's own bytes): ``(data, media type)``."""
        buffer = io.BytesIO()
        self.image(index).save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


class FolderDataset(Dataset):
    """A folder of images, found recursively; symlinks that lead out of the root are skipped."""

    def __init__(self, spec: DatasetSpec) -> None:
        assert spec.path is not None
        root = spec.path.resolve()
        if not root.is_dir():
            raise RegistryConfigError(f"dataset {spec.name!r}: {str(spec.path)!r} is not a folder")
        self.root = root
        files: list[str] = []
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for file_name in sorted(names):
                path = Path(folder) / file_name
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                real = path.resolve()
                if not real.is_relative_to(root) or not real.is_file():
                    continue  # a link out of the root, or a dangling one
                files.append(path.relative_to(root).as_posix())
        tops = {f.split("/", 1)[0] for f in files}
        # An ImageFolder tree: every image sits in a first-level folder, named by its label.
        if files and all("/" in f for f in files):
            labels = sorted(tops)
            targets = [labels.index(f.split("/", 1)[0]) for f in files]
        else:
            labels, targets = [], [-1] * len(files)
        super().__init__(spec, files, labels, targets)

    def _path(self, index: int) -> Path:
        return self.root / self.ids[index]

    def image(self, index: int) -> Image.Image:
        try:
            data = self._path(index).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"image {self.ids[index]!r} cannot be read: {exc}") from exc
        return decode_image(data, max_pixels=MAX_PIXELS)

    def encoded(self, index: int) -> tuple[bytes, str]:
        image = self.image(index)  # checks that it decodes
        if image.format in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
            media = {"JPEG": "image/jpeg", "WEBP": "image/webp"}.get(
                image.format, f"image/{image.format.lower()}"
            )
            return self._path(index).read_bytes(), media
        return super().encoded(index)


class ShapesDataset(Dataset):
    """The built-in set: ``n`` generated ``shapes`` images from a seed, ids ``<class>/<i>.png``."""

    def __init__(self, spec: DatasetSpec, n: int = SHAPES_IMAGES, seed: int = SHAPES_SEED):
        from cnnviz.data.shapes import CLASSES, generate

        images, targets = generate(n, seed)
        self.pixels = images  # (n, 3, 64, 64) uint8
        ids = [f"{CLASSES[int(t)]}/{i:05d}.png" for i, t in enumerate(targets)]
        super().__init__(spec, ids, list(CLASSES), [int(t) for t in targets])

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index].permute(1, 2, 0).contiguous().numpy())


class DatasetRegistry:
    """Data set names to data sets, listed lazily and once; safe to share between threads.

    Always holds the built-in ``shapes``. Entries that cannot be parsed are kept in
    :attr:`errors`; a folder that cannot be listed raises when opened.
    """

    def __init__(
        self,
        specs: Mapping[str, DatasetSpec] | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        builtin = DatasetSpec(
            BUILTIN_DATASET,
            None,
            f"{SHAPES_IMAGES} generated images of the shapes classes (seed {SHAPES_SEED})",
        )
        self._specs = {BUILTIN_DATASET: builtin, **(specs or {})}
        self.errors = dict(errors or {})
        self._open: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path | None) -> DatasetRegistry:
        """The built-in set plus the ``[datasets.NAME]`` tables of a TOML file."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryConfigError(f"cannot read models file {str(path)!r}: {exc}") from exc
        tables: Any = document.get("datasets", {})
        if not isinstance(tables, Mapping):
            raise RegistryConfigError(f"{str(path)!r}: 'datasets' must be a table of tables")
        specs: dict[str, DatasetSpec] = {}
        errors: dict[str, str] = {}
        for name, entry in tables.items():
            where = f"[datasets.{name}] in {str(path)!r}"
            if name == BUILTIN_DATASET:
                errors[name] = f"{where}: the name is reserved for the built-in dataset"
                continue
            unknown = (
                sorted(set(entry) - {"path", "description"}) if isinstance(entry, Mapping) else []
            )
            folder = entry.get("path") if isinstance(entry, Mapping) else None
            if unknown or not isinstance(folder, str) or not folder:
                errors[name] = f"{where}: needs `path` (a folder) and at most `description`"
                continue
            root = Path(folder).expanduser()
            root = root if root.is_absolute() else path.parent / root
            specs[name] = DatasetSpec(name, root, str(entry.get("description", "")))
        registry = cls(specs)
        registry.errors.update({k: v for k, v in errors.items() if k != BUILTIN_DATASET})
        return registry

    def names(self) -> list[str]:
        return sorted({*self._specs, *self.errors})

    def spec(self, name: str) -> DatasetSpec:
        if name in self.errors:
            raise RegistryConfigError(self.errors[name])
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownDatasetError(name, self.names()) from None

    def get(self, name: str) -> Dataset:
        """The data set, listed at first use; EmptyDatasetError when it has no image."""
        spec = self.spec(name)
        with self._lock:
            dataset = self._open.get(name)
            if dataset is None:
                dataset = ShapesDataset(spec) if spec.path is None else FolderDataset(spec)
                self._open[name] = dataset
        if len(dataset) == 0:
            raise EmptyDatasetError(
                f"dataset {name!r} has no images under {str(spec.path)!r} (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return dataset

    def refresh(self, name: str) -> None:
        """Forget the listing of ``name``; it is listed again at next use."""
        with self._lock:
            self._open.pop(name, None)
