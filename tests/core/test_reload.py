"""The models file and the model store read again when they change, without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from cnnviz.data.datasets import DatasetRegistry
from cnnviz.errors import ModelLoadError, ModelNameTakenError, UnknownModelError
from cnnviz.models import ModelRegistry
from cnnviz.models.store import InvalidUploadError
from tests.core import tinynets

TINY = """
[models.{name}]
factory = "tests.core.tinynets:build"
weights = "random"
channels = 1
input_size = [{size}, {size}]
"""


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` and move the mtime on: two writes within a clock tick must still
    read as a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    rewrite(path, TINY.format(name="a", size=16))
    return path


def test_an_edit_adds_changes_and_removes_models(models_file: Path) -> None:
    registry = ModelRegistry.from_file(models_file, poll_interval_s=0)
    old = registry.get("a")
    assert old.spec.input_size == (16, 16)
    rewrite(models_file, TINY.format(name="a", size=24) + TINY.format(name="b", size=8))
    assert registry.names() == ["a", "b", "shapes"]
    new = registry.get("a")
    assert new is not old and new.spec.input_size == (24, 24)
    assert new.index.info("0").shape == (4, 24, 24)
    # Whoever holds the old model (a running job) goes on with it.
    assert old.module(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    rewrite(models_file, TINY.format(name="b", size=8))
    with pytest.raises(UnknownModelError):
        registry.spec("a")
    assert registry.problems == []


def test_a_bad_edit_keeps_the_last_good_entries_and_says_so(models_file: Path) -> None:
    registry = ModelRegistry.from_file(models_file, poll_interval_s=0)
    rewrite(models_file, "[models.a\nfactory = ")
    assert registry.spec("a").input_size == (16, 16)
    assert len(registry.problems) == 1
    assert "cannot read models file" in registry.problems[0]
    assert "last good entries stay in use" in registry.problems[0]
    # An entry that turns bad keeps its last good spec; a new bad one is its own error.
    rewrite(
        models_file,
        TINY.format(name="a", size=16)
        .replace("tinynets:build", "tinynets:gone")
        .replace('weights = "random"', 'weights = "DEFAULT"')
        + '[models.c]\narch = "resnet181"\nweights = "random"\n',
    )
    assert registry.spec("a").input_size == (16, 16)
    assert "[models.a]" in registry.problems[0] and "last good entry" in registry.problems[0]
    assert "unknown arch" in registry.errors["c"]
    rewrite(models_file, TINY.format(name="a", size=12))
    assert registry.problems == [] and registry.errors == {}
    assert registry.spec("a").input_size == (12, 12)


def test_the_file_is_looked_at_once_per_interval(models_file: Path) -> None:
    registry = ModelRegistry.from_file(models_file, poll_interval_s=3600)
    rewrite(models_file, TINY.format(name="b", size=8))
    assert registry.names() == ["a", "shapes"]  # not looked at yet
    registry.refresh(force=True)
    assert registry.names() == ["b", "shapes"]


def test_datasets_are_read_again_too(tmp_path: Path, models_file: Path) -> None:
    (tmp_path / "one").mkdir()
    rewrite(models_file, '[datasets.one]\npath = "one"\n')
    datasets = DatasetRegistry.from_file(models_file, poll_interval_s=0)
    assert datasets.names() == ["one", "shapes"]
    rewrite(models_file, '[datasets.one]\npath = "one"\n[datasets.two]\npath = "two"\n')
    assert datasets.names() == ["one", "shapes", "two"]
    rewrite(models_file, "[datasets.one\n")
    assert datasets.names() == ["one", "shapes", "two"]
    assert "last good entries" in datasets.problems[0]
    rewrite(models_file, '[datasets.two]\npath = "two"\n')
    assert datasets.names() == ["shapes", "two"] and datasets.problems == []


def tiny_weights(seed: int) -> bytes:
    torch.manual_seed(seed)
    return save_safetensors(tinynets.build().state_dict())


SPEC = {"arch": "resnet18", "input_size": [32, 32], "kwargs": {"num_classes": 3}}


def resnet_weights(seed: int) -> bytes:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    return save_safetensors(model.state_dict())


def test_a_second_process_sees_registrations_and_checks_the_digest(
    tmp_path: Path, models_file: Path
) -> None:
    api = ModelRegistry.from_file(models_file, store=tmp_path / "store", poll_interval_s=0)
    worker = ModelRegistry.from_file(models_file, store=tmp_path / "store", poll_interval_s=0)
    data = resnet_weights(0)
    spec = api.register("r18", SPEC, data)
    assert spec.origin == "store" and spec.sha256 is not None
    assert worker.spec("r18").sha256 == spec.sha256
    loaded = worker.get("r18")
    assert worker.weights_digest("r18") == spec.sha256
    # Replaced: the worker builds the new one at its next use.
    replaced = api.register("r18", SPEC, resnet_weights(1))
    assert worker.get("r18") is not loaded
    assert worker.weights_digest("r18") == replaced.sha256
    # A weights file changed behind the store's back is refused before use.
    weights = tmp_path / "store" / "weights" / f"{replaced.sha256}.safetensors"
    weights.write_bytes(data)
    fresh = ModelRegistry.from_file(models_file, store=tmp_path / "store", poll_interval_s=0)
    with pytest.raises(ModelLoadError, match="sha256"):
        fresh.get("r18")
    api.unregister("r18")
    with pytest.raises(UnknownModelError):
        worker.spec("r18")


def test_the_file_and_the_builtin_hold_their_names(tmp_path: Path, models_file: Path) -> None:
    registry = ModelRegistry.from_file(models_file, store=tmp_path / "store", poll_interval_s=0)
    for name in ("a", "shapes"):
        with pytest.raises(ModelNameTakenError):
            registry.register(name, SPEC, resnet_weights(0))
    registry.register("late", SPEC, resnet_weights(0))
    # A models file that takes a registered name later wins, and says so.
    rewrite(models_file, TINY.format(name="a", size=16) + TINY.format(name="late", size=8))
    assert registry.spec("late").origin == "config"
    assert any("'late' is hidden" in p for p in registry.problems)


def test_a_failed_registration_keeps_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry.from_file(None, store=tmp_path / "store", poll_interval_s=0)
    with pytest.raises(InvalidUploadError, match="Missing key"):
        registry.register("t", {**SPEC, "arch": "resnet34"}, resnet_weights(0))
    with pytest.raises(InvalidUploadError, match="factory"):
        registry.register("t", {"factory": "tests.core.tinynets:build"}, tiny_weights(0))
    assert not (tmp_path / "store" / "specs").exists()
    assert not list((tmp_path / "store").glob("weights/*"))


def test_a_registration_passes_plain_arguments_only(tmp_path: Path) -> None:
    registry = ModelRegistry.from_file(None, store=tmp_path / "store", poll_interval_s=0)
    with pytest.raises(InvalidUploadError, match="plain values"):
        registry.register("t", {**SPEC, "kwargs": {"norm_layer": {"x": 1}}}, resnet_weights(0))
    with pytest.raises(InvalidUploadError, match="must match"):
        registry.register("../t", SPEC, resnet_weights(0))
    with pytest.raises(UnknownModelError):
        registry.unregister("../specs/t")
