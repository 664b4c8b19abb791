"""Data sets with pixel-level concepts: mask files, their checks, and their alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.data.datasets import BUILTIN_DATASET, DatasetRegistry
from cnnviz.data.loader import MaskedInputs
from cnnviz.data.shapes import CLASSES, generate_with_masks
from cnnviz.errors import RegistryConfigError

CONCEPTS = ["red", "green"]


def _write(root: Path, masks: Path) -> Path:
    """Images of 128×64 (left half red, right half green) with masks saying so, in the
    forms a mask may take, and the bad ones; returns the models file."""
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[:, :64, 0] = 255
    pixels[:, 64:, 1] = 255
    index = np.ones((64, 128), dtype=np.uint8)
    index[:, 64:] = 2
    for name in ("good_l", "good_p", "wrong_size", "too_high", "corrupt", "missing", "rgb"):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "a" / f"{name}.jpg", quality=95)
    (masks / "a").mkdir(parents=True, exist_ok=True)
    Image.fromarray(index).save(masks / "a" / "good_l.png")
    # A palette image whose colours say nothing of its indices: index 1 is painted blue.
    paletted = Image.fromarray(index).convert("P")
    paletted.putpalette([0, 0, 0, 0, 0, 255, 255, 255, 0] + [0] * (253 * 3))
    paletted.save(masks / "a" / "good_p.png")
    Image.fromarray(index[:32]).save(masks / "a" / "wrong_size.png")
    Image.fromarray(index * 2).save(masks / "a" / "too_high.png")
    (masks / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    Image.fromarray(np.stack([index] * 3, axis=2)).save(masks / "a" / "rgb.png")
    models = root.parent / "models.toml"
    models.write_text(
        f'[datasets.pix]\npath = "{root}"\nmasks = "{masks}"\nconcepts = {CONCEPTS!r}\n'.replace(
            "'", '"'
        )
    )
    return models


def test_masks_are_read_as_indices_fitted_like_their_images_and_bad_ones_flagged(
    tmp_path: Path,
) -> None:
    models = _write(tmp_path / "images", tmp_path / "masks")
    dataset = DatasetRegistry.from_file(models).get("pix")
    assert dataset.concepts == CONCEPTS and dataset.has_masks
    inputs = MaskedInputs(
        dataset, range(len(dataset)), size=(32, 32), channels=3, mean=(0, 0, 0), std=(1, 1, 1)
    )
    seen = {}
    for i in range(len(dataset)):
        x, index, ok, mask, mask_ok = inputs[i]
        seen[dataset.ids[index].split("/")[1]] = (ok, mask_ok)
        assert ok and mask.shape == (32, 32) and mask.dtype == torch.uint8
        if mask_ok:
            # The centre crop of a 2:1 image keeps its middle: red left, green right, and the
            # mask says the same of the same pixels.
            red = x[0] > 0.5
            assert torch.equal(mask == 1, red) and torch.equal(mask == 2, ~red)
            assert red[:, :16].all() and not red[:, 16:].any()
    assert seen == {
        "good_l.jpg": (True, True),
        "good_p.jpg": (True, True),
        "wrong_size.jpg": (True, False),
        "too_high.jpg": (True, False),
        "corrupt.jpg": (True, False),
        "missing.jpg": (True, False),
        "rgb.jpg": (True, False),
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('concepts = ["a"]', "`concepts` needs `masks`"),
        ('masks = "{masks}"', "`masks` needs `concepts`"),
        ('masks = "{masks}"\nconcepts = ["a", "a"]', "distinct names"),
        ('masks = "{inside}"\nconcepts = ["a"]', "outside `path`"),
    ],
)
def test_bad_mask_settings_are_refused_with_the_way_out(
    tmp_path: Path, extra: str, message: str
) -> None:
    root = tmp_path / "images"
    (root / "inside").mkdir(parents=True)
    models = tmp_path / "models.toml"
    entry = extra.format(masks=tmp_path / "masks", inside=root / "inside")
    models.write_text(f'[datasets.pix]\npath = "{root}"\n{entry}\n')
    registry = DatasetRegistry.from_file(models)
    with pytest.raises(RegistryConfigError, match=message):
        registry.get("pix")


def test_the_builtin_dataset_masks_each_image_with_its_class_where_covered_half() -> None:
    dataset = DatasetRegistry().get(BUILTIN_DATASET)
    assert dataset.concepts == list(CLASSES)
    _images, labels, coverage = generate_with_masks(len(dataset), 20_240_613)
    for i in (0, 1, 7, 100):
        expected = np.where(coverage[i].numpy() >= 0.5, int(labels[i]) + 1, 0)
        assert np.array_equal(dataset.mask(i), expected)
        assert 0 < (dataset.mask(i) > 0).sum() < 64 * 64
        assert dataset.ids[i].startswith(CLASSES[int(labels[i])])
