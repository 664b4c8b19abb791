"""Small data sets on disk for the exemplar tests: generated shapes in an ImageFolder tree."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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


def assert_same_exemplars(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two exemplar results agree: the same images in the same order and positions, scores
    equal to float tolerance (a forward in batches of other sizes rounds differently), and
    everything else equal but what depends on the carrier (shards, timing, device)."""
    ignored = ("shards", "elapsed_s", "device", "layers")
    assert {k: v for k, v in a.items() if k not in ignored} == {
        k: v for k, v in b.items() if k not in ignored
    }
    assert len(a["layers"]) == len(b["layers"])
    for layer_a, layer_b in zip(a["layers"], b["layers"], strict=True):
        assert (layer_a["name"], layer_a["shape"]) == (layer_b["name"], layer_b["shape"])
        for unit_a, unit_b in zip(layer_a["units"], layer_b["units"], strict=True):
            for which in ("top", "bottom"):
                list_a, list_b = unit_a[which] or [], unit_b[which] or []
                assert [(e["image"], e["position"]) for e in list_a] == [
                    (e["image"], e["position"]) for e in list_b
                ], (layer_a["name"], unit_a["channel"], which)
                for e_a, e_b in zip(list_a, list_b, strict=True):
                    assert math.isclose(e_a["score"], e_b["score"], rel_tol=1e-5, abs_tol=1e-5)
