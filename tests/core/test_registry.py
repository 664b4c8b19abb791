"""The model registry: TOML entries, weight sources, and errors that stay with their model."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cnnviz.errors import ModelLoadError, RegistryConfigError, UnknownModelError
from cnnviz.models import BUILTIN_MODEL, ModelRegistry
from tests.core import tinynets
from tests.models_files import toml_tables

TINY = "tests.core.tinynets:build"


def write_models(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def write_entries(tmp_path: Path, **entries: dict[str, object]) -> Path:
    """A models file of one ``[models.<name>]`` entry per keyword, of its fields."""
    return write_models(tmp_path, toml_tables("models", entries))


@pytest.fixture
def tiny_weights(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    state = tinynets.build().state_dict()
    safetensors_path = tmp_path / "tiny.safetensors"
    save_file(state, str(safetensors_path))
    pt_path = tmp_path / "tiny.pt"
    torch.save({"state_dict": state}, pt_path)
    return {"safetensors": safetensors_path, "pt": pt_path, "state": state}  # type: ignore[dict-item]


def test_the_builtin_model_is_always_there() -> None:
    registry = ModelRegistry.from_file(None)
    assert registry.names() == [BUILTIN_MODEL]
    loaded = registry.get(BUILTIN_MODEL)
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
    assert registry.get(BUILTIN_MODEL) is loaded  # loaded once


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="known models: shapes"):
        ModelRegistry.from_file(None).spec("resnet999")


def test_factory_models_load_safetensors_and_state_dicts(tmp_path: Path, tiny_weights) -> None:
    tiny = {"factory": TINY, "input_size": [16, 16], "channels": 1}
    path = write_entries(
        tmp_path,
        tiny_st={**tiny, "weights": str(tiny_weights["safetensors"]), "mean": [0.5], "std": [0.25]},
        tiny_pt={**tiny, "weights": "tiny.pt"},  # relative to the models file
    )
    registry = ModelRegistry.from_file(path)
    assert registry.errors == {}
    for name in ("tiny_st", "tiny_pt"):
        module = registry.get(name).module
        assert torch.equal(module.state_dict()["0.weight"], tiny_weights["state"]["0.weight"])
    assert registry.spec("tiny_st").input_shape == (1, 16, 16)
    assert [i.shape for i in registry.get("tiny_st").index.layers()][-1] == (2, 16, 16)


def test_torchvision_arch_with_random_weights(tmp_path: Path) -> None:
    path = write_entries(
        tmp_path, r18={"arch": "resnet18", "weights": "random", "input_size": [64, 64]}
    )
    loaded = ModelRegistry.from_file(path).get("r18")
    assert type(loaded.module).__name__ == "ResNet"
    assert loaded.index.info("layer2").shape == (128, 8, 8)


def test_one_bad_entry_leaves_the_others_working(tmp_path: Path, tiny_weights) -> None:
    path = write_entries(
        tmp_path,
        good={
            "factory": TINY,
            "weights": str(tiny_weights["safetensors"]),
            "channels": 1,
            "input_size": [16, 16],
        },
        typo={"arch": "resnet181", "weights": "random"},
        missing={"arch": "resnet18", "weights": "/nowhere/r18.safetensors"},
        noweights={"arch": "resnet18"},
    )
    registry = ModelRegistry.from_file(path)
    assert registry.get("good").module is not None
    assert set(registry.errors) == {"typo", "missing", "noweights"}
    with pytest.raises(ModelLoadError, match=r"unknown arch 'resnet181'"):
        registry.get("typo")
    with pytest.raises(ModelLoadError, match=r"/nowhere/r18.safetensors.*does not exist"):
        registry.spec("missing")
    with pytest.raises(ModelLoadError, match="'weights' is required"):
        registry.get("noweights")


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    save_file(tinynets.build(width=8).state_dict(), str(tmp_path / "wide.safetensors"))
    path = write_entries(
        tmp_path, tiny={"factory": TINY, "weights": "wide.safetensors", "channels": 1}
    )
    registry = ModelRegistry.from_file(path)
    with pytest.raises(ModelLoadError, match=r"model 'tiny'.*do not match the architecture"):
        registry.get("tiny")
    # The failure stays with that model.
    assert registry.get(BUILTIN_MODEL).module is not None


class Payload:
    """Something only weights_only=False could unpickle."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_a_pickle_that_needs_weights_only_false_is_refused(tmp_path: Path, capsys) -> None:
    torch.save({"0.weight": Payload()}, tmp_path / "evil.pt")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"0.weight": Payload()}, f)
    path = write_entries(tmp_path, evil={"factory": TINY, "weights": "evil.pt", "channels": 1})
    with pytest.raises(ModelLoadError, match="weights_only=False"):
        ModelRegistry.from_file(path).get("evil")
    path.write_text(path.read_text().replace("evil.pt", "raw.pkl"))
    with pytest.raises(ModelLoadError, match="weights_only=False"):
        ModelRegistry.from_file(path).get("evil")
    assert "this must never run" not in capsys.readouterr().out


def test_a_factory_that_returns_no_module(tmp_path: Path) -> None:
    path = write_entries(
        tmp_path, odd={"factory": "tests.core.tinynets:not_a_module", "weights": "random"}
    )
    with pytest.raises(ModelLoadError, match="returned str, not a Module"):
        ModelRegistry.from_file(path).get("odd")


def test_named_torchvision_weights_without_network_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    path = write_entries(tmp_path, r18={"arch": "resnet18", "weights": "DEFAULT"})
    with pytest.raises(ModelLoadError, match=r"could not be downloaded.*TORCH_HOME"):
        ModelRegistry.from_file(path).get("r18")


def test_unknown_torchvision_weights_name_lists_the_choices(tmp_path: Path) -> None:
    path = write_entries(tmp_path, r18={"arch": "resnet18", "weights": "IMAGENET9"})
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        ModelRegistry.from_file(path).get("r18")


def test_an_unreadable_models_file_is_an_error_at_start_up(tmp_path: Path) -> None:
    path = write_models(tmp_path, "[models.r18\narch=")
    with pytest.raises(RegistryConfigError, match="cannot read models file"):
        ModelRegistry.from_file(path)


def test_the_builtin_name_cannot_be_taken(tmp_path: Path) -> None:
    path = write_entries(tmp_path, shapes={"arch": "resnet18", "weights": "random"})
    registry = ModelRegistry.from_file(path)
    assert registry.spec(BUILTIN_MODEL).builtin
    assert registry.errors == {}
    assert "reserved for the built-in model" in registry.warnings[0]
