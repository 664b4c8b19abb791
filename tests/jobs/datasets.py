"""Small data sets on disk for the exemplar tests: generated shapes in an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cnnviz.data.shapes import CLASSES, generate

SMALL = "small"
SMALL_IMAGES = 240
CORRUPT = "circle/zz-corrupt.png"


def write_image_folder(root: Path, n: int = SMALL_IMAGES, seed: int = 7) -> Path:
    """``n`` shapes images as ``root/<class>/<i>.png``, plus one corrupt PNG, a text file and a
    symlink that leads out of the root (neither of the last two is an image of the set)."""
    images, labels = generate(n, seed)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    (root / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (root / "circle" / "notes.txt").write_text("not an image")
    outside = root.parent / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "circle" / "escape.png").symlink_to(outside)
    return root


def write_models_file(path: Path, dataset_root: Path) -> Path:
    path.write_text(
        f'[datasets.{SMALL}]\npath = "{dataset_root}"\ndescription = "generated shapes"\n'
    )
    return path
