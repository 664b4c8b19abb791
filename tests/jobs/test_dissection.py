"""Dissection jobs through the runner: planted ground truth, brute force, shards, bad masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.data.shapes import CLASSES
from cnnviz.models import ModelRegistry
from cnnviz.models.registry import ModelSpec
from schemas.dissection import DissectionCreate, DissectionResult
from schemas.jobs import Progress
from tests.jobs.dissect_data import COLOURS, SIZE, Blob, blobs, write_blobs
from tests.jobs.dissect_helpers import MODELS, dissect
from workers.kinds import JobCancelled, JobContext, Resources, get_kind

COLOUR_IMAGES = 90


def colour_resources(root: Path, **options: Any) -> Resources:
    """The hand-set colour net, and the ``blobs`` data set whose images and masks are under
    ``root`` (``images/``, ``masks/``)."""
    models = root / "models.toml"
    models.write_text(
        f'[datasets.blobs]\npath = "{root / "images"}"\nmasks = "{root / "masks"}"\n'
        f"concepts = {COLOURS!r}\n".replace("'", '"')
    )
    spec = ModelSpec(
        name="colours",
        factory="tests.jobs.dissect_data:colour_net",
        weights="random",  # the factory's own, hand-set weights
        input_size=(SIZE, SIZE),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return Resources(
        models=ModelRegistry({"colours": spec}),
        datasets=DatasetRegistry.from_file(models),
        **options,
    )


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Resources, list[Blob]]:
    root = tmp_path_factory.mktemp("colours")
    items = blobs(COLOUR_IMAGES)
    write_blobs(root / "images", root / "masks", items)
    return colour_resources(root, batch_size=16), items


def hand_iou(items: list[Blob], colour: int, quantile: float) -> tuple[float, float]:
    """``(T, IoU)`` of the colour's unit, counted by hand.

    At the layer (16×16), a blob is its ``(side / 2)²`` cells at its level; every other cell
    is 0. Upsampled ×2 bilinearly (``align_corners=False``), a blob's pixels are its level
    inside, 3/4 of it along its inner edge, 9/16 at its four inner corners, and at most 1/4
    of it outside (below T: asserted): those above T are on, all of them inside the blob.
    """
    cells = []
    for blob in items:
        level = blob.level if blob.colour == colour else 0
        cells += [level] * (blob.side // 2) ** 2 + [0] * (16 * 16 - (blob.side // 2) ** 2)
    t = float(np.quantile(np.array(cells, dtype=np.float64), 1 - quantile))
    on = area = 0
    for blob in items:
        if blob.colour != colour:
            continue
        u, s = blob.level, blob.side
        for factor, pixels in ((1.0, (s - 2) ** 2), (0.75, 4 * (s - 2)), (0.5625, 4)):
            on += pixels if factor * u > t else 0
        assert 0.25 * u < t
        area += s * s
    return t, on / area


def test_each_colour_unit_is_labelled_with_its_colour_and_its_iou_counted_by_hand(
    colours: tuple[Resources, list[Blob]],
) -> None:
    resources, items = colours
    quantile = 0.01
    result = dissect(resources, "colours", dataset="blobs", layers=["2"], quantile=quantile, k=5)
    assert (result.method, result.images, result.skipped_masks) == ("masks", COLOUR_IMAGES, 0)
    (layer,) = result.layers
    assert layer.shape == [3, 16, 16]
    for unit in layer.units:
        t, expected = hand_iou(items, unit.channel, quantile)
        assert unit.label == COLOURS[unit.channel]
        assert unit.activation_threshold == t
        assert unit.score == pytest.approx(expected, abs=1e-12)
        assert [a.score for a in unit.alternatives] == [0.0, 0.0]  # the other colours
        assert unit.selectivity is None
        # Its top images are blobs of its colour, brightest first.
        levels = [items[int(e.image[4:8])] for e in unit.top]
        assert all(b.colour == unit.channel for b in levels)
    assert (layer.detectors, layer.unique_concepts) == (3, 3)


def test_one_shard_and_four_give_the_same_result(
    colours: tuple[Resources, list[Blob]],
) -> None:
    resources, _ = colours
    results = []
    for shard_images in (COLOUR_IMAGES, COLOUR_IMAGES // 4 + 1):
        resources.shard_images = shard_images
        results.append(
            dissect(resources, "colours", dataset="blobs", layers=["2", "1"], quantile=0.01)
        )
    one, four = results
    assert (one.shards, four.shards) == (1, 4)
    ignored = {"shards", "elapsed_s"}
    assert one.model_dump(exclude=ignored) == four.model_dump(exclude=ignored)


def brute_force_masks(
    dataset_masks: np.ndarray, maps: np.ndarray, concepts: int, quantile: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(T (C,), IoU (C, K))`` in NumPy from every map ``(N, C, h, w)`` and mask ``(N, H, W)``.

    Bilinear upsampling with ``align_corners=False`` is separable: ``R_y @ map @ R_xᵀ``, with
    the source coordinate ``(i + 0.5) · h / H − 0.5`` clamped at 0 and the edges.
    """

    def weights(out: int, src: int) -> np.ndarray:
        r = np.zeros((out, src))
        for i in range(out):
            x = max((i + 0.5) * src / out - 0.5, 0.0)
            lo = min(int(np.floor(x)), src - 1)
            hi = min(lo + 1, src - 1)
            frac = x - lo
            r[i, lo] += 1 - frac
            r[i, hi] += frac
        return r

    _n, c, h, w = maps.shape
    height, width = dataset_masks.shape[1:]
    ry, rx = weights(height, h), weights(width, w)
    t = np.quantile(
        maps.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64), 1 - quantile, axis=1
    )
    scores = np.zeros((c, concepts))
    for unit in range(c):
        up = np.einsum("yh,nhw,xw->nyx", ry, maps[:, unit].astype(np.float64), rx)
        on = up > t[unit]
        for k in range(concepts):
            concept = dataset_masks == k + 1
            union = (on | concept).sum()
            scores[unit, k] = (on & concept).sum() / union if union else 0.0
    return t, scores


def test_masks_on_the_builtin_dataset_equal_a_brute_force_numpy_count() -> None:
    datasets = DatasetRegistry(shapes_images=240)
    resources = Resources(models=MODELS, datasets=datasets, shard_images=70, batch_size=64)
    result = dissect(resources, dataset="shapes", layers=["block3.relu"], k=4)
    assert (result.method, result.shards, result.images) == ("masks", 4, 240)
    dataset = datasets.get("shapes")
    spec = MODELS.get("shapes").spec
    x = spec.normalize(dataset.pixels.float() / 255)
    with torch.inference_mode():
        maps = MODELS.get("shapes").index.capture(x, ["block3.relu"])["block3.relu"].numpy()
    t, scores = brute_force_masks(dataset.masks, maps, len(CLASSES), 0.005)
    (layer,) = result.layers
    labelled = 0
    for unit in layer.units:
        assert unit.activation_threshold == pytest.approx(t[unit.channel], rel=1e-5, abs=1e-6)
        # Float32 maps in another batch rounding: a pixel at T within 1e-6 may flip.
        assert unit.score == pytest.approx(scores[unit.channel].max(), abs=2e-3)
        best = CLASSES[int(np.argmax(scores[unit.channel]))]
        labelled += unit.label == best
        assert (
            unit.label == best
            or scores[unit.channel].max() - scores[unit.channel, CLASSES.index(unit.label)] < 2e-3
        )
    assert labelled >= len(layer.units) - 1
    assert layer.detectors == int((scores.max(axis=1) > 0.04).sum())


def test_labels_on_the_class_logits_equal_the_majority_of_each_top_k() -> None:
    resources = Resources(models=MODELS, shard_images=700, batch_size=128)
    result = dissect(resources, dataset="shapes", layers=["fc"], method="labels", k=16)
    dataset = DatasetRegistry().get("shapes")
    spec = MODELS.get("shapes").spec
    x = spec.normalize(dataset.pixels.float() / 255)
    with torch.inference_mode():
        logits = torch.cat(
            [MODELS.get("shapes").index.capture(b, ["fc"])["fc"] for b in x.split(256)]
        )
    targets = torch.tensor(dataset.targets)
    (layer,) = result.layers
    own = 0
    for unit in layer.units:
        top = logits[:, unit.channel].topk(16).indices
        counts = torch.bincount(targets[top], minlength=len(CLASSES))
        assert unit.label == CLASSES[int(counts.argmax())]
        assert unit.score == counts.max().item() / 16
        assert unit.activation_threshold is None
        own += unit.label == CLASSES[unit.channel]
        # Morcos et al.'s selectivity over ReLU'd class means.
        means = torch.stack(
            [logits[targets == c, unit.channel].double().mean() for c in range(len(CLASSES))]
        ).clamp_min(0)
        best = int(means.argmax())
        rest = torch.cat([means[:best], means[best + 1 :]]).mean()
        assert unit.selectivity == pytest.approx(float((means[best] - rest) / (means[best] + rest)))
    # Every logit's top 16 is its own class (the head was trained one-vs-rest as well as with
    # cross-entropy for this: scripts/train_shapes.py, docs/dissection.md).
    assert own == 12, [u.label for u in layer.units]
    assert (layer.detectors, layer.unique_concepts) == (12, 12)


def test_bad_masks_are_counted_and_named_and_their_images_still_rank(tmp_path: Path) -> None:
    items = blobs(12)
    write_blobs(tmp_path / "images", tmp_path / "masks", items)
    masks = tmp_path / "masks" / "img"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(masks / "0000.png")  # wrong size
    Image.fromarray(np.full((SIZE, SIZE), 9, dtype=np.uint8)).save(masks / "0001.png")  # > K
    (masks / "0002.png").unlink()  # missing
    (masks / "0003.png").write_bytes(b"not a png")  # corrupt
    resources = colour_resources(tmp_path)
    result: DissectionResult = dissect(resources, "colours", dataset="blobs", layers=["2"], k=12)
    bad = [f"img/{i:04d}.png" for i in range(4)]
    assert (result.images, result.skipped, result.skipped_masks) == (12, 0, 4)
    assert result.skipped_mask_images == bad
    # Their images still rank among the top images of their colours.
    tops = {e.image for unit in result.layers[0].units for e in unit.top}
    assert set(bad) <= tops


def test_a_one_shard_job_counts_in_its_shard_with_progress_and_stops_when_cancelled(
    colours: tuple[Resources, list[Blob]],
) -> None:
    """One shard: the second pass runs in the shard, counted in the progress (2 × images),
    and a cancel during it stops it; several shards leave it to the merge."""
    resources, _ = colours
    kind = get_kind("dissection")
    request = kind.prepare(
        DissectionCreate(dataset="blobs", layers=["2"], quantile=0.01), "colours", resources
    )
    resources.shard_images = COLOUR_IMAGES
    assert kind.work(request, "colours", resources) == 2 * COLOUR_IMAGES
    seen: list[Progress] = []

    def cancelled() -> bool:
        return bool(seen) and seen[-1].step > COLOUR_IMAGES  # in the second pass

    context = JobContext(
        on_progress=lambda progress, _: seen.append(progress),
        should_cancel=cancelled,
        progress_interval_s=0.0,
    )
    with pytest.raises(JobCancelled):
        kind.run_shard(request, "colours", 0, resources, context)
    assert seen[-1].total == 2 * COLOUR_IMAGES and seen[-1].step < 2 * COLOUR_IMAGES
    resources.shard_images = COLOUR_IMAGES // 4 + 1
    assert kind.work(request, "colours", resources) == COLOUR_IMAGES


def test_a_one_shard_job_decodes_each_image_once(
    colours: tuple[Resources, list[Blob]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts of a one-shard job read the first pass's maps back from disk: no image is
    decoded again and the model runs once per batch, and the result is the one the merge
    counts by running the model again (four shards)."""
    resources, _ = colours
    dataset = resources.datasets.get("blobs")
    index = resources.model("colours").index
    decoded: list[int] = []
    forwards: list[int] = []
    image, capture = type(dataset).image, type(index).capture
    monkeypatch.setattr(type(dataset), "image", lambda d, i: decoded.append(i) or image(d, i))
    monkeypatch.setattr(
        type(index), "capture", lambda s, x, names: forwards.append(len(x)) or capture(s, x, names)
    )
    resources.shard_images = COLOUR_IMAGES
    one = dissect(resources, "colours", dataset="blobs", layers=["2"], quantile=0.01)
    assert sorted(decoded) == list(range(COLOUR_IMAGES))
    assert sum(forwards) == COLOUR_IMAGES
    resources.shard_images = COLOUR_IMAGES // 4 + 1
    four = dissect(resources, "colours", dataset="blobs", layers=["2"], quantile=0.01)
    ignored = {"shards", "elapsed_s"}
    assert one.model_dump(exclude=ignored) == four.model_dump(exclude=ignored)


def test_sharded_counts_on_the_builtin_dataset_equal_one_shard_exactly() -> None:
    """Real float activations: one shard (counted from its cached maps) and four (counted
    shard by shard in the merge, a forward again) give identical labels and IoUs, not
    approximately — the batches are the same, and counts are integers."""
    results = []
    for shard_images in (240, 60):
        datasets = DatasetRegistry(shapes_images=240)
        resources = Resources(
            models=MODELS, datasets=datasets, shard_images=shard_images, batch_size=30
        )
        results.append(dissect(resources, dataset="shapes", layers=["block2.relu"], k=4))
    one, four = results
    assert (one.shards, four.shards) == (1, 4)
    units = [(u.label, u.score, u.alternatives) for u in one.layers[0].units]
    assert units == [(u.label, u.score, u.alternatives) for u in four.layers[0].units]
    assert sum(u.score > 0 for u in one.layers[0].units) > 0
