"""Attribution maps: hand-computable values on tiny models, the pointing game and completeness
on the built-in model, and a model left exactly as it was found."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import nn

from cnnviz.attribution import attribute, get_method, map_picture, method_names, planned_passes
from cnnviz.data.shapes import CLASSES, generate_with_masks
from cnnviz.errors import InvalidArgumentError, LayerShapeError, UnknownLayerError
from cnnviz.models import ModelRegistry
from tests.api.nets import Heads

METHODS = [
    "gradcam",
    "gradcam_plus_plus",
    "guided_gradcam",
    "integrated_gradients",
    "layercam",
    "occlusion",
    "saliency",
    "scorecam",
]


@pytest.fixture(scope="module")
def shapes() -> nn.Module:
    return ModelRegistry.from_file(None).get("shapes").module


def normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 images of the shapes data set as the shapes model's input."""
    return (images.float() / 255 - 0.5) / 0.3


class Linear(nn.Module):
    """Two scores linear in the pixels of a 1×2×3 image: ``S_k(x) = sum(W_k · x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2, 0, 0, 3, 0], [0, 0, 0.5, 0, 0, -1]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


X = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])  # (1, 1, 2, 3): non-square, grey


def test_every_method_is_registered_once() -> None:
    assert method_names() == METHODS
    with pytest.raises(InvalidArgumentError, match="did you mean 'saliency'"):
        get_method("salency")


def test_saliency_of_a_linear_model_is_its_weights() -> None:
    result = attribute(Linear(), X, "saliency", targets=[0, 1])
    assert result.maps.shape == (2, 2, 3)
    assert result.maps[0].flatten().tolist() == [1.0, 2.0, 0.0, 0.0, 3.0, 0.0]
    assert result.maps[1].flatten().tolist() == [0.0, 0.0, 0.5, 0.0, 0.0, 1.0]


def test_integrated_gradients_of_a_linear_model_is_input_times_weight() -> None:
    result = attribute(Linear(), X, "integrated_gradients", targets=[0], steps=4)
    # (x - 0) · W, exactly: the gradient is constant along the path.
    assert result.maps[0].flatten().tolist() == pytest.approx([1.0, -4.0, 0.0, 0.0, 15.0, 0.0])
    assert result.completeness is not None
    assert result.completeness[0].tolist() == pytest.approx([12.0, 12.0])
    assert result.signed


def test_occlusion_of_a_linear_model_is_the_covered_contribution() -> None:
    result = attribute(Linear(), X, "occlusion", targets=[0, 1], window=1, stride=1)
    # Covering one pixel with 0 removes exactly W_k · x there.
    assert result.maps[0].flatten().tolist() == pytest.approx([1.0, -4.0, 0, 0, 15.0, 0])
    assert result.maps[1].flatten().tolist() == pytest.approx([0, 0, 1.5, 0, 0, -6.0])


def test_predictions_are_the_top_scores_with_labels_and_probabilities() -> None:
    result = attribute(Linear(), X, "saliency", labels=["a", "b"])
    # S = (1 - 4 + 15, 1.5 - 6) = (12, -4.5)
    top, second = result.predictions
    assert (top.index, top.label, top.score) == (0, "a", pytest.approx(12.0))
    assert second.label == "b" and second.probability == pytest.approx(
        float(torch.softmax(torch.tensor([12.0, -4.5]), 0)[1])
    )
    assert [t.index for t in result.targets] == [0]  # the default target: the top prediction
    assert (
        attribute(Linear(), X, "saliency", targets=["b"], labels=["a", "b"]).targets[0].index == 1
    )


def test_several_targets_give_the_maps_of_separate_calls(shapes: nn.Module) -> None:
    images, _ = generate_with_masks(1, seed=3)[:2]
    x = normalised(images)
    for method in ("gradcam", "occlusion", "integrated_gradients"):
        both = attribute(shapes, x, method, targets=[2, 3], layer="block4.relu", steps=8)
        for k, target in enumerate([2, 3]):
            alone = attribute(shapes, x, method, targets=[target], layer="block4.relu", steps=8)
            torch.testing.assert_close(both.maps[k], alone.maps[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "guided_gradcam", "saliency"])
def test_the_default_target_is_the_top_prediction_without_a_forward_of_its_own(
    shapes: nn.Module, method: str
) -> None:
    images, _ = generate_with_masks(2, seed=8)[:2]
    for image in normalised(images):
        default = attribute(shapes, image, method, layer="block4.relu", labels=CLASSES)
        top = default.predictions[0]
        assert default.targets == (top,) and len(default.predictions) == 5
        explicit = attribute(shapes, image, method, layer="block4.relu", targets=[top.index])
        torch.testing.assert_close(default.maps, explicit.maps, rtol=1e-4, atol=1e-6)
        assert [p.index for p in explicit.predictions] == [p.index for p in default.predictions]


def test_grad_cam_points_at_the_shape(shapes: nn.Module) -> None:
    """The pointing game on 50 generated shapes, at Grad-CAM's own resolution.

    Grad-CAM at ``block4.relu`` is an 8×8 map (one cell per 8×8 pixels) upsampled to 64×64;
    a hit is a peak whose cell covers part of the shape (coverage > 0.5). Measured over four
    seeds: 0.80–0.86 (the peak pixel itself is inside the shape 0.42–0.70 of the time: the
    model's Grad-CAM also lights up the image's border, where zero padding meets the
    background).
    """
    images, labels, masks = generate_with_masks(120, seed=0)
    chosen = (labels < 6).nonzero().flatten()[:50]  # the six filled shapes have a mask
    assert len(chosen) == 50
    hits = 0
    for i in chosen.tolist():
        result = attribute(shapes, normalised(images[i]), "gradcam", layer="block4.relu")
        assert result.targets[0] == result.predictions[0]
        y, x = divmod(int(result.maps[0].argmax()), 64)
        cell = masks[i, y // 8 * 8 : y // 8 * 8 + 8, x // 8 * 8 : x // 8 * 8 + 8]
        hits += bool((cell > 0.5).any())
    assert hits / 50 >= 0.8


def test_integrated_gradients_is_complete_within_5_percent(shapes: nn.Module) -> None:
    images, _ = generate_with_masks(5, seed=11)[:2]
    black = torch.full((1, 3, 1, 1), -0.5 / 0.3)
    for image in images:
        result = attribute(shapes, normalised(image), "integrated_gradients", baseline=black)
        assert result.completeness is not None
        total, expected = result.completeness[0].tolist()
        assert total == pytest.approx(float(result.maps[0].sum()), rel=1e-4)
        assert abs(total - expected) <= 0.05 * abs(expected)
        # expected is S(x) - S(black), computed here independently
        with torch.no_grad():
            target = result.targets[0].index
            difference = (
                shapes(normalised(image)[None])[0, target]
                - shapes(black.expand(1, 3, 64, 64))[0, target]
            )
        assert expected == pytest.approx(float(difference), rel=1e-4)


def hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.fixture
def resnet() -> Iterator[nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    yield model


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_found(resnet: nn.Module, method: str) -> None:
    model = resnet.train()  # train mode, weights that require grad, in-place ReLUs
    model.layer1.requires_grad_(False)
    before = hooks(model)
    grads = [p.requires_grad for p in model.parameters()]
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 48, 40)  # non-square
    result = attribute(model, x, method, layer="layer4", targets=[0, 2], steps=4, window=16)
    assert result.maps.shape == (2, 48, 40)
    assert torch.isfinite(result.maps).all()
    assert hooks(model) == before
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace
    # BatchNorm running statistics untouched: the passes ran in eval mode.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_multi_head_model_needs_its_output_chosen() -> None:
    model = Heads()
    x = torch.randn(1, 1, 12, 16)
    with pytest.raises(InvalidArgumentError, match=r"3 outputs.*\(1, 4\), \(1, 10\), \(1,\)"):
        attribute(model, x, "saliency")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        attribute(model, x, "saliency", output=3)
    result = attribute(model, x, "gradcam", layer="relu", output=1, targets=[9])
    assert result.maps.shape == (1, 12, 16) and len(result.predictions) == 5
    one = attribute(model, x, "saliency", output=2)
    assert one.predictions[0].index == 0 and one.predictions[0].probability is None
    with pytest.raises(InvalidArgumentError, match="omit 'output'"):
        attribute(Linear(), X, "saliency", output=0)


class Reused(nn.Module):
    """One ReLU module called twice, and a functional op."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.c2(self.relu(self.c1(x))))
        return self.fc((y * 2).mean(dim=(2, 3)))


def test_grad_cam_layers_are_modules_that_run_once_or_their_last_call() -> None:
    model = Reused()
    x = torch.randn(1, 1, 8, 8)
    assert attribute(model, x, "gradcam", layer="relu:1").maps.shape == (1, 8, 8)
    with pytest.raises(LayerShapeError, match=r"call 0 of module 'relu'.*'relu:1'"):
        attribute(model, x, "gradcam", layer="relu")
    with pytest.raises(LayerShapeError, match="functional op"):
        attribute(model, x, "gradcam", layer="mul")
    with pytest.raises(LayerShapeError, match=r"\(C, H, W\)"):
        attribute(model, x, "gradcam", layer="fc")
    with pytest.raises(LayerShapeError, match=r"\(C, H, W\)"):
        attribute(model, x, "gradcam", layer="fc", targets=[1])
    assert hooks(model) == 0  # stopped inside captum's forward: every hook removed all the same
    with pytest.raises(UnknownLayerError, match="'c1'"):
        attribute(model, x, "gradcam", layer="c3")
    with pytest.raises(InvalidArgumentError, match=r"needs a layer.*'c1', 'c2'"):
        attribute(model, x, "gradcam")


class Untraceable(Reused):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.c1(x))
        if y.sum() > 0:  # data-dependent: FX cannot trace it; layers come from hooks
            y = y + 1
        return self.fc(self.c2(y).mean(dim=(2, 3)))


def test_grad_cam_on_a_model_fx_cannot_trace() -> None:
    result = attribute(Untraceable(), torch.randn(1, 1, 8, 8), "guided_gradcam", layer="c2")
    assert result.maps.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": [3]}, "target 3 is out of range"),
        ({"targets": ["c"]}, "unknown target 'c'"),
        ({"targets": []}, "empty"),
        ({"targets": list(range(2)) * 9 + ["x"]}, "unknown target"),
        ({"steps": 0}, "steps"),
        ({"window": 3}, "window must be 1..2"),
        ({"window": 2, "stride": 3}, "stride must be 1..window"),
    ],
)
def test_bad_arguments_name_the_valid_choices(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        attribute(Linear(), X, "occlusion", labels=["a", "b"], **options)  # type: ignore[arg-type]


def test_planned_passes_are_the_cost_of_each_method() -> None:
    assert planned_passes("saliency", (64, 64), targets=3) == 3
    assert planned_passes("integrated_gradients", (64, 64), targets=3, steps=50) == 150
    assert planned_passes("occlusion", (64, 64), targets=3) == 15 * 15 + 1
    assert planned_passes("occlusion", (64, 64), window=8, stride=8) == 8 * 8 + 1


def test_map_pictures_are_pngs_with_the_peak(shapes: nn.Module) -> None:
    image = torch.rand(3, 64, 64)
    attribution = torch.zeros(64, 64)
    attribution[10, 20] = 2.0
    attribution[5, 5] = -3.0
    picture = map_picture(attribution, image, signed=True)
    assert picture.stats.peak == (10, 20) and picture.stats.min == -3.0
    assert picture.overlay.startswith(b"\x89PNG") and picture.heatmap.startswith(b"\x89PNG")
    with pytest.raises(InvalidArgumentError, match="opacity"):
        map_picture(attribution, image, signed=True, opacity=2)
    assert len(CLASSES) == 12
