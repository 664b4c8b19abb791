"""Dataset exemplars on the built-in model: the mining, the merge, the data sets.

The mining runs through the runner with records in memory, exactly as the in-process
transport runs it (its shards one after another).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnnviz.data.datasets import DatasetRegistry, EmptyDatasetError, UnknownImageError
from cnnviz.data.shapes import CLASSES
from cnnviz.exemplars import TopK, pool, receptive_field
from cnnviz.layers import layer_index
from cnnviz.models import ModelRegistry
from schemas.exemplars import ExemplarsResult
from tests.jobs.datasets import (
    CORRUPT,
    SMALL,
    SMALL_IMAGES,
    assert_same_exemplars,
    write_image_folder,
    write_models_file,
)
from tests.jobs.dissect_helpers import run_job
from workers.kinds import Resources

MODELS = ModelRegistry.from_file(None)


def mine(resources: Resources, **body: object) -> ExemplarsResult:
    """Run an exemplars job to its result, in this process."""
    return ExemplarsResult.model_validate_json(run_job("exemplar", resources, "shapes", body))


@pytest.fixture(scope="module")
def shapes_result() -> ExemplarsResult:
    """The built-in data set (2400 images) in 4 shards: the class logits and a conv layer."""
    resources = Resources(models=MODELS, shard_images=700, batch_size=128)
    return mine(resources, dataset="shapes", layers=["fc", "block3.relu"], k=16, bottom=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> DatasetRegistry:
    root = tmp_path_factory.mktemp("exemplars")
    models = write_models_file(root / "models.toml", write_image_folder(root / "images"))
    return DatasetRegistry.from_file(models)


def test_the_class_logits_rank_images_of_their_own_class_first(
    shapes_result: ExemplarsResult,
) -> None:
    fc = shapes_result.layers[0]
    assert (fc.name, fc.shape, shapes_result.shards) == ("fc", [len(CLASSES)], 4)
    own = []
    for unit in fc.units:
        labels = [exemplar.image.split("/")[0] for exemplar in unit.top]
        assert len(labels) == 16
        own.append(labels.count(CLASSES[unit.channel]) > 8)
        # A 1-D layer scores the value itself: no position to speak of.
        assert all(exemplar.position == [0, 0] for exemplar in unit.top)
    assert sum(own) >= 8, own  # most classes


def test_streaming_top_k_equals_a_brute_force_ranking(shapes_result: ExemplarsResult) -> None:
    loaded = MODELS.get("shapes")
    dataset = DatasetRegistry().get("shapes")
    spec = loaded.spec
    x = spec.normalize(dataset.pixels.float() / 255)
    with torch.inference_mode():
        acts = torch.cat(
            [loaded.index.capture(b, ["block3.relu"])["block3.relu"] for b in x.split(128)]
        )
    scores = acts.mean(dim=(2, 3))  # (N, C): every image, every channel
    conv = shapes_result.layers[1]
    assert conv.shape == list(acts.shape[1:])
    for unit in conv.units:
        column = scores[:, unit.channel]
        for exemplars, descending in ((unit.top, True), (unit.bottom or [], False)):
            # The k best by score, ties to the lower image index.
            order = sorted(
                range(len(column)), key=lambda i: (-column[i] if descending else column[i], i)
            )
            expected = [dataset.ids[i] for i in order[:16]]
            assert [e.image for e in exemplars] == expected
            got = torch.tensor([e.score for e in exemplars])
            assert torch.allclose(got, column[order[:16]], atol=1e-5)
            for e in exemplars:  # the position is the spatial maximum of that image
                flat = acts[dataset.position(e.image), unit.channel].flatten()
                assert flat[e.position[0] * acts.shape[3] + e.position[1]] == flat.max()


def test_the_result_does_not_depend_on_how_the_data_set_is_cut(folder: DatasetRegistry) -> None:
    body = {
        "dataset": SMALL,
        "layers": ["block2.relu", "fc"],
        "k": 5,
        "pool": "max",
        "bottom": True,
    }
    whole = mine(Resources(models=MODELS, datasets=folder, shard_images=10_000), **body)
    cut = mine(Resources(models=MODELS, datasets=folder, shard_images=37, batch_size=16), **body)
    assert (whole.shards, cut.shards) == (1, 7)
    assert_same_exemplars(whole.model_dump(), cut.model_dump())


def test_a_corrupt_file_is_skipped_and_counted(folder: DatasetRegistry) -> None:
    dataset = folder.get(SMALL)
    assert len(dataset) == SMALL_IMAGES + 1  # the corrupt PNG is listed, the text file is not
    assert dataset.labels == sorted(CLASSES)
    result = mine(
        Resources(models=MODELS, datasets=folder, shard_images=100), dataset=SMALL, layers=["fc"]
    )
    assert (result.images, result.skipped, result.skipped_images) == (SMALL_IMAGES, 1, [CORRUPT])
    assert all(e.image != CORRUPT for unit in result.layers[0].units for e in unit.top)


def test_ids_outside_the_root_name_nothing(folder: DatasetRegistry) -> None:
    dataset = folder.get(SMALL)
    assert "circle/escape.png" not in dataset.ids  # a symlink that leads out of the root
    for bad in ("../outside.png", "/etc/passwd", "circle/../../outside.png", "circle/escape.png"):
        with pytest.raises(UnknownImageError, match="has no image"):
            dataset.position(bad)


def test_an_empty_data_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    registry = DatasetRegistry.from_file(write_models_file(tmp_path / "m.toml", tmp_path / "empty"))
    with pytest.raises(EmptyDatasetError, match="has no images"):
        registry.get(SMALL)


def test_top_k_lists_merge_in_any_grouping() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(90, 4, generator=generator).round(decimals=1)  # with ties
    positions = torch.zeros(90, 4, 2, dtype=torch.long)
    one = TopK(4, 7)
    one.update(scores, torch.arange(90), positions)
    parts = [TopK(4, 7) for _ in range(3)]
    for part, rows in zip(parts, torch.arange(90).split(30), strict=True):
        part.update(scores[rows], rows, positions[rows])
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    assert torch.equal(parts[2].index, one.index)
    assert torch.equal(parts[2].scores, one.scores)


def test_pooling_by_mean_and_max_with_the_position_of_the_maximum() -> None:
    maps = torch.zeros(1, 2, 3, 4)
    maps[0, 0, 2, 1] = 12.0
    maps[0, 1] = 1.0
    mean, where = pool(maps, "mean")
    assert mean.tolist() == [[1.0, 1.0]]
    assert pool(maps, "max")[0].tolist() == [[12.0, 1.0]]
    assert where[0, 0].tolist() == [2, 1]


def test_the_receptive_field_follows_the_layer_geometry() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()
    )
    field = receptive_field(layer_index(net, (1, 16, 16)), "3", (1, 16, 16))
    assert field.size == (5, 5)  # 3 + (3 - 1) × 1
    assert field.stride == (2.0, 2.0)
    assert field.box(4, 4) == (6, 6, 11, 11)  # unit 4 is centred on input pixel 8
    assert field.box(0, 0) == (0, 0, 3, 3)  # clipped by the border
