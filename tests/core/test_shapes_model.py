"""The built-in ``shapes`` data set and model: determinism, accuracy, weights, layer names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cnnviz.data.shapes import CLASSES, IMAGE_SIZE, generate, sample_image
from cnnviz.imaging import normalize
from cnnviz.models.shapes import (
    INPUT_SIZE,
    MEAN,
    STD,
    WEIGHTS_PATH,
    ShapesNet,
    build_shapes_net,
    load_shapes_net,
)

# Never a training seed: scripts/train_shapes.py trains on seeds >= 1,000,000.
HELD_OUT_SEED = 12345


@pytest.fixture(scope="module")
def model() -> ShapesNet:
    return load_shapes_net()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W) uint8`` → the float input the model was trained on."""
    return normalize(images.float() / 255.0, MEAN, STD)


@torch.inference_mode()
def predict(model: ShapesNet, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(normalise(chunk)).argmax(1) for chunk in images.split(250)])


def test_classes_are_twelve_snake_case_names() -> None:
    assert len(CLASSES) == len(set(CLASSES)) == 12
    assert all(name.isidentifier() and name == name.lower() for name in CLASSES)
    assert {"triangle", "stripes_diagonal_45", "stripes_diagonal_135"} <= set(CLASSES)


def test_generate_returns_balanced_uint8_images_and_int64_labels() -> None:
    images, labels = generate(48, seed=1)
    assert images.shape == (48, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.uint8
    assert labels.shape == (48,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=len(CLASSES)).tolist() == [4] * len(CLASSES)


def test_generate_is_determined_by_the_seed() -> None:
    images, labels = generate(24, seed=7)
    again_images, again_labels = generate(24, seed=7)
    other_images, _ = generate(24, seed=8)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other_images)


def test_generate_zero_images() -> None:
    images, labels = generate(0, seed=0)
    assert images.shape == (0, 3, IMAGE_SIZE, IMAGE_SIZE) and labels.shape == (0,)


def test_held_out_accuracy_is_at_least_95_percent(model: ShapesNet) -> None:
    images, labels = generate(1000, seed=HELD_OUT_SEED)
    accuracy = (predict(model, images) == labels).float().mean().item()
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


def test_every_sample_image_is_classified_correctly(model: ShapesNet) -> None:
    samples = [sample_image(name) for name in CLASSES]
    assert all(s.mode == "RGB" and s.size == INPUT_SIZE for s in samples)
    batch = torch.stack([torch.from_numpy(np.array(s)).permute(2, 0, 1) for s in samples])
    predicted = [CLASSES[i] for i in predict(model, batch).tolist()]
    assert predicted == list(CLASSES)


def test_sample_image_is_deterministic() -> None:
    assert np.array_equal(np.array(sample_image("star")), np.array(sample_image("star")))


def test_unknown_sample_name_raises_value_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown sample 'pentagon'") as caught:
        sample_image("pentagon")
    assert all(name in str(caught.value) for name in CLASSES)


def test_weights_file_is_small_and_loads_strictly_in_eval_mode(model: ShapesNet) -> None:
    assert WEIGHTS_PATH.stat().st_size < 5 * 2**20
    state = load_file(WEIGHTS_PATH)
    assert state.keys() == build_shapes_net().state_dict().keys()
    assert not model.training
    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["classes"]) == list(CLASSES)
    assert tuple(json.loads(metadata["mean"])) == MEAN
    assert tuple(json.loads(metadata["std"])) == STD


def test_layer_names_are_dotted_and_traceable() -> None:
    net = build_shapes_net().eval()
    _, eval_nodes = get_graph_node_names(net)
    expected = {f"block1.{part}" for part in ("conv", "bn", "relu", "pool")}
    expected |= {"block4.relu", "pool", "fc"}
    assert expected <= set(eval_nodes)
    extractor = create_feature_extractor(net, return_nodes=["block1.conv", "block4.relu"])
    out = extractor(torch.zeros(2, 3, *INPUT_SIZE))
    assert out["block1.conv"].shape == (2, net.block1.conv.out_channels, *INPUT_SIZE)
    assert out["block4.relu"].shape == (2, net.block4.conv.out_channels, 8, 8)
