"""Image data sets: folders of images (ImageFolder trees give labels) and the built-in ``shapes``.

An image is addressed by its id: the file's path relative to the data set's root, with ``/``
separators (``circle/00012.png``). Only files found by scanning the root are addressable, so an
id with ``..``, an absolute path, or a symlink that leads out of the root names nothing.
Operators declare data sets in the same TOML file as models::

    [datasets.photos]
    path = "/srv/photos"          # found recursively; root/<label>/x.png gives labels
    description = "what it holds"
    masks = "/srv/photo-masks"    # optional: root/a/b.jpg's mask is masks/a/b.png
    concepts = ["sky", "tree"]    # with masks: pixel value i is concepts[i - 1], 0 none

Files are only listed when a data set is opened; pixels are decoded when an image is read,
and an unreadable or corrupt file is then reported (:class:`~cnnviz.errors.InvalidImageError`)
so that a caller can skip and count it.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnviz.data.masks import MAX_CONCEPTS, InvalidMaskError, decode_mask
from cnnviz.errors import InvalidArgumentError, InvalidImageError, RegistryConfigError
from cnnviz.imaging.decode import decode_image
from cnnviz.reload import DEFAULT_POLL_INTERVAL_S, Watched, file_stamp

__all__ = [
    "BUILTIN_DATASET",
    "Dataset",
    "DatasetRegistry",
    "DatasetSpec",
    "EmptyDatasetError",
    "InvalidMaskError",
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


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: a folder (``path``) or the built-in generated set (``path`` None).

    ``masks``: a folder outside ``path`` mirroring its tree with one PNG mask per image, whose
    pixel values index ``concepts`` (see :mod:`cnnviz.data.masks`).
    """

    name: str
    path: Path | None
    description: str = ""
    masks: Path | None = None
    concepts: tuple[str, ...] = ()


class Dataset:
    """The images of one data set, listed once: ids in a stable order, labels, pixels.

    ``ids[i]`` is the id of image ``i``; ``targets[i]`` its label index into ``labels`` (or
    -1 without labels). ``concepts`` are the pixel-level concepts of its masks (empty without
    masks).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        ids: list[str],
        labels: list[str],
        targets: list[int],
        concepts: list[str] | None = None,
    ):
        self.spec = spec
        self.ids = ids
        self.labels = labels
        self.targets = targets
        self.concepts = list(concepts if concepts is not None else spec.concepts)
        self._index = {image_id: i for i, image_id in enumerate(ids)}

    @property
    def has_masks(self) -> bool:
        return bool(self.concepts)

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

    def mask(self, index: int) -> np.ndarray:
        """Image ``index``'s concept mask ``(H, W) uint8`` at the image's own size (0: none,
        ``i``: ``concepts[i - 1]``); InvalidMaskError when it is missing or bad."""
        raise InvalidMaskError(f"dataset {self.name!r} has no masks")

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

    def mask(self, index: int) -> np.ndarray:
        if self.spec.masks is None:
            return super().mask(index)
        root = self.spec.masks.resolve()
        path = (root / self.ids[index]).with_suffix(".png")
        # The id is a listed file, but a link in the mask tree could still lead out of it.
        real = path.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            raise InvalidMaskError(f"mask of {self.ids[index]!r} is missing")
        try:
            data = real.read_bytes()
        except OSError as exc:
            raise InvalidMaskError(f"mask of {self.ids[index]!r} cannot be read: {exc}") from exc
        return decode_mask(data, len(self.concepts), max_pixels=MAX_PIXELS)


class ShapesDataset(Dataset):
    """The built-in set: ``n`` generated ``shapes`` images from a seed, ids ``<class>/<i>.png``.

    Its concepts are the 12 classes, at pixel level too: a pixel of an image of class ``c``
    is concept ``c`` where the shape (or the texture's foreground) covers at least half of it.
    """

    def __init__(self, spec: DatasetSpec, n: int = SHAPES_IMAGES, seed: int = SHAPES_SEED):
        from cnnviz.data.shapes import CLASSES, generate_with_masks

        images, targets, coverage = generate_with_masks(n, seed)
        self.pixels = images  # (n, 3, 64, 64) uint8
        # (n, 64, 64) uint8: 1 + class where covered at least half, 0 elsewhere.
        covered = (coverage >= 0.5).to(torch.uint8)
        self.masks = (covered * (targets.to(torch.uint8) + 1)[:, None, None]).numpy()
        ids = [f"{CLASSES[int(t)]}/{i:05d}.png" for i, t in enumerate(targets)]
        super().__init__(spec, ids, list(CLASSES), [int(t) for t in targets], list(CLASSES))

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index].permute(1, 2, 0).contiguous().numpy())

    def mask(self, index: int) -> np.ndarray:
        return self.masks[index]


class DatasetRegistry:
    """Data set names to data sets, listed lazily and once; safe to share between threads.

    Always holds the built-in ``shapes`` (``shapes_images`` images; fewer for quick tests).
    Entries that cannot be parsed are kept in
    :attr:`errors`; a folder that cannot be listed raises when opened. A registry made
    :meth:`from_file` reads its file again when it changes (at most every
    ``poll_interval_s``); a bad edit keeps the last good entries and is reported in
    :attr:`problems`.
    """

    def __init__(
        self,
        specs: Mapping[str, DatasetSpec] | None = None,
        errors: Mapping[str, str] | None = None,
        *,
        watched: Watched | None = None,
        shapes_images: int = SHAPES_IMAGES,
    ) -> None:
        builtin = DatasetSpec(
            BUILTIN_DATASET,
            None,
            f"{shapes_images} generated images of the shapes classes (seed {SHAPES_SEED})",
        )
        self._shapes_images = shapes_images
        self._builtin = builtin
        self._specs = {BUILTIN_DATASET: builtin, **(specs or {})}
        self._errors = dict(errors or {})
        self.problems: list[str] = []
        self._watched = watched
        self._open: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: str | Path | None, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    ) -> DatasetRegistry:
        """The built-in set plus the ``[datasets.NAME]`` tables of a TOML file."""
        if path is None:
            return cls()
        path = Path(path)
        stamp = file_stamp(path)
        specs, errors = _read_datasets(path)
        return cls(specs, errors, watched=Watched(path, stamp, poll_interval_s))

    def reload(self) -> None:
        """Read the file again if it changed; forget the listings of changed data sets."""
        if self._watched is None or not self._watched.changed():
            return
        try:
            specs, errors = _read_datasets(self._watched.path)
        except RegistryConfigError as exc:
            self.problems = [f"{exc}; the last good entries stay in use"]
            log.warning("%s", self.problems[0])
            return
        problems = []
        for name in list(errors):
            if name in self._specs and name != BUILTIN_DATASET:  # turned bad: keep the last good
                problems.append(f"{errors.pop(name)}; its last good entry stays in use")
                specs[name] = self._specs[name]
        for problem in problems:
            log.warning("%s", problem)
        merged = {BUILTIN_DATASET: self._builtin, **specs}
        with self._lock:
            for name in list(self._open):
                if merged.get(name) != self._specs.get(name):
                    del self._open[name]
            self._specs, self._errors, self.problems = merged, errors, problems

    @property
    def errors(self) -> dict[str, str]:
        self.reload()
        return self._errors

    def names(self) -> list[str]:
        self.reload()
        return sorted({*self._specs, *self._errors})

    def spec(self, name: str) -> DatasetSpec:
        self.reload()
        if name in self._errors:
            raise RegistryConfigError(self._errors[name])
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
                dataset = (
                    ShapesDataset(spec, self._shapes_images)
                    if spec.path is None
                    else FolderDataset(spec)
                )
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


def _read_datasets(path: Path) -> tuple[dict[str, DatasetSpec], dict[str, str]]:
    """The ``[datasets.NAME]`` tables of a TOML file: specs, and the bad entries' errors."""
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
            continue  # the name is reserved for the built-in data set
        unknown = (
            sorted(set(entry) - {"path", "description", "masks", "concepts"})
            if isinstance(entry, Mapping)
            else []
        )
        folder = entry.get("path") if isinstance(entry, Mapping) else None
        if unknown or not isinstance(folder, str) or not folder:
            errors[name] = (
                f"{where}: needs `path` (a folder) and at most `description`, `masks` and "
                "`concepts`"
            )
            continue
        root = _folder(path, folder)
        masks, concepts, problem = _masks_entry(entry, path, root)
        if problem:
            errors[name] = f"{where}: {problem}"
            continue
        specs[name] = DatasetSpec(name, root, str(entry.get("description", "")), masks, concepts)
    return specs, errors


def _folder(models_file: Path, folder: str) -> Path:
    root = Path(folder).expanduser()
    return root if root.is_absolute() else models_file.parent / root


def _masks_entry(
    entry: Mapping[str, Any], models_file: Path, root: Path
) -> tuple[Path | None, tuple[str, ...], str]:
    """``(masks, concepts, problem)`` of a ``[datasets.NAME]`` table; ``problem`` "" if fine."""
    masks, concepts = entry.get("masks"), entry.get("concepts")
    if masks is None and concepts is None:
        return None, (), ""
    if not isinstance(masks, str) or not masks:
        return None, (), "`concepts` needs `masks`, a folder of PNG masks mirroring `path`"
    if (
        not isinstance(concepts, list)
        or not 1 <= len(concepts) <= MAX_CONCEPTS
        or not all(isinstance(c, str) and c for c in concepts)
        or len(set(concepts)) != len(concepts)
    ):
        return (
            None,
            (),
            (
                f"`masks` needs `concepts`, a list of 1 to {MAX_CONCEPTS} distinct names (pixel "
                "value i of a mask is concepts[i - 1])"
            ),
        )
    folder = _folder(models_file, masks)
    if folder.resolve().is_relative_to(root.resolve()):
        return None, (), "`masks` must be a folder outside `path`, so that no mask is an image"
    return folder, tuple(concepts), ""
