"""The timm and Hugging Face sources: built offline from tiny configs, compared with the
library's own forward pass."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cnnviz.errors import ModelLoadError
from cnnviz.models import ModelRegistry

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing may be fetched: a download attempt fails instead of reaching the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_models(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def tiny_hf_resnet(directory: Path, processor: dict[str, object] | None) -> torch.nn.Module:
    """A 3-class Hugging Face ResNet saved in ``directory`` (with a processor config)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(1)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "fox"},
        label2id={"cat": 0, "dog": 1, "fox": 2},
    )
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(directory)
    if processor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


PROCESSOR = {
    "do_normalize": True,
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
    "size": {"height": 40, "width": 48},
    "image_processor_type": "ViTImageProcessor",
}


def test_a_timm_model_is_built_without_download_then_given_the_weights_file(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    save_file(reference.state_dict(), str(tmp_path / "r10.safetensors"))
    path = write_models(
        tmp_path,
        """
[models.r10]
timm = "resnet10t"
weights = "r10.safetensors"
kwargs = { num_classes = 5 }
input_size = [32, 32]
""",
    )
    registry = ModelRegistry.from_file(path)
    assert registry.errors == {}
    assert registry.spec("r10").source == "timm:resnet10t"
    loaded = registry.get("r10")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), reference(x), atol=1e-5)
    assert loaded.index.info("layer1").shape[0] == 64


def test_an_unknown_timm_name_is_that_models_error(tmp_path: Path) -> None:
    path = write_models(tmp_path, '[models.bad]\ntimm = "resnet10q"\nweights = "random"\n')
    with pytest.raises(ModelLoadError, match=r"unknown timm model 'resnet10q'.*resnet10t"):
        ModelRegistry.from_file(path).get("bad")


def test_a_timm_model_takes_no_named_weights(tmp_path: Path) -> None:
    path = write_models(tmp_path, '[models.bad]\ntimm = "resnet10t"\nweights = "DEFAULT"\n')
    registry = ModelRegistry.from_file(path)
    assert "needs a weights file path" in registry.errors["bad"]


def test_an_hf_directory_gives_its_weights_input_and_labels(tmp_path: Path) -> None:
    reference = tiny_hf_resnet(tmp_path / "hf", PROCESSOR)
    path = write_models(tmp_path, '[models.hfr]\nhf = "hf"\n')
    registry = ModelRegistry.from_file(path)
    assert registry.errors == {}
    spec = registry.spec("hfr")
    # From the processor config, not the ImageNet defaults.
    assert spec.input_size == (40, 48)
    assert spec.mean == (0.5, 0.4, 0.3) and spec.std == (0.2, 0.25, 0.3)
    assert spec.labels == ("cat", "dog", "fox")
    assert spec.weights is None and spec.source == f"hf:{tmp_path / 'hf'}"
    loaded = registry.get("hfr")
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        out = loaded.module(x)
        assert isinstance(out, torch.Tensor)  # the logits, not a ModelOutput
        assert torch.allclose(out, reference(pixel_values=x).logits, atol=1e-5)


def test_what_the_entry_gives_wins_over_the_directory(tmp_path: Path) -> None:
    tiny_hf_resnet(tmp_path / "hf", PROCESSOR)
    path = write_models(
        tmp_path,
        '[models.hfr]\nhf = "hf"\nmean = [0.0, 0.0, 0.0]\ninput_size = [24, 24]\n',
    )
    spec = ModelRegistry.from_file(path).spec("hfr")
    assert spec.mean == (0.0, 0.0, 0.0)
    assert spec.std == (0.2, 0.25, 0.3)
    assert spec.input_size == (24, 24)


def test_an_hf_model_with_a_weights_file_of_its_own(tmp_path: Path) -> None:
    tiny_hf_resnet(tmp_path / "hf", PROCESSOR)
    torch.manual_seed(7)
    from transformers import AutoConfig, ResNetForImageClassification

    other = ResNetForImageClassification(AutoConfig.from_pretrained(tmp_path / "hf")).eval()
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    path = write_models(tmp_path, '[models.hfr]\nhf = "hf"\nweights = "other.safetensors"\n')
    module = ModelRegistry.from_file(path).get("hfr").module
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.allclose(module(x), other(pixel_values=x).logits, atol=1e-5)


def test_an_hf_directory_that_does_not_say_its_normalization(tmp_path: Path) -> None:
    tiny_hf_resnet(tmp_path / "hf", None)
    path = write_models(tmp_path, '[models.hfr]\nhf = "hf"\ninput_size = [32, 32]\n')
    registry = ModelRegistry.from_file(path)
    assert "'mean' is not given" in registry.errors["hfr"]
    path = write_models(tmp_path, '[models.hfr]\nhf = "nowhere"\n')
    assert "has no config.json" in ModelRegistry.from_file(path).errors["hfr"]


def test_an_hf_entry_cannot_ask_for_remote_code(tmp_path: Path) -> None:
    tiny_hf_resnet(tmp_path / "hf", PROCESSOR)
    path = write_models(
        tmp_path, '[models.hfr]\nhf = "hf"\nkwargs = { trust_remote_code = true }\n'
    )
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        ModelRegistry.from_file(path).get("hfr")


def test_a_missing_extra_is_an_error_of_that_model_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without(name: str, *args: object) -> object:
        return None if name in ("timm", "transformers") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    path = write_models(
        tmp_path,
        '[models.t]\ntimm = "resnet10t"\nweights = "random"\n'
        '[models.h]\nhf = "somewhere"\n'
        '[models.r]\narch = "resnet18"\nweights = "random"\n',
    )
    registry = ModelRegistry.from_file(path)
    assert "pip install 'cnnviz[timm]'" in registry.errors["t"]
    assert "pip install 'cnnviz[hf]'" in registry.errors["h"]
    assert "r" not in registry.errors


def test_a_timm_entry_cannot_fetch_or_read_other_weights(tmp_path: Path) -> None:
    for key, value in (("pretrained", "true"), ("checkpoint_path", '"/etc/hostname"')):
        path = write_models(
            tmp_path,
            f'[models.t]\ntimm = "resnet10t"\nweights = "random"\nkwargs = {{ {key} = {value} }}\n',
        )
        with pytest.raises(ModelLoadError, match=f"kwargs may not set \\['{key}'\\]"):
            ModelRegistry.from_file(path).get("t")
