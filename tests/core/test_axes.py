"""Every layer says what its axes are, and every operation reads units through them.

Planted ground truth: hand-built nets whose token grid, channels-last block and odd nodes are
known by construction (tests/core/axes_nets.py), and torchvision's ViT and Swin built offline.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_t
from torchvision.models.vision_transformer import VisionTransformer

from cnnviz import AmbiguousAxesError, LayerShapeError, unit_maps
from cnnviz.attribution import attribute
from cnnviz.axes import LayerAxes, parse_axes_table, token_grids
from cnnviz.errors import RegistryConfigError
from cnnviz.exemplars import mine
from cnnviz.featuremaps import feature_maps, layer_activations
from cnnviz.layers import LayerIndex, capture_activations, layer_index
from cnnviz.optvis import RenderSettings, objectives, visualize
from tests.core.axes_nets import (
    GRID,
    IMAGE,
    PATCH,
    OddPermute,
    TinyConvNeXt,
    TinyViT,
    TokenNet,
)

SHAPE = (3, IMAGE, IMAGE)


def infos(model: nn.Module, **kwargs: object) -> dict[str, object]:
    index = LayerIndex(model, SHAPE, type(model).__name__, **kwargs)  # type: ignore[arg-type]
    return {info.name: info for info in index.layers()}


def test_a_vit_lists_tokens_with_their_grid_and_class_token() -> None:
    layers = infos(TinyViT())
    fc1 = layers["blocks.0.mlp.fc1"]
    assert (fc1.shape, fc1.axes, fc1.units) == ((17, 10), "tokens", 10)  # type: ignore[attr-defined]
    assert (fc1.token_grid, fc1.prefix_tokens, fc1.map_shape) == ((4, 4), 1, (10, 4, 4))  # type: ignore[attr-defined]
    for name in ("add", "blocks.0", "blocks.1.attn.proj", "blocks.1.attn.qkv", "norm"):
        assert layers[name].axes == "tokens" and layers[name].prefix_tokens == 1  # type: ignore[attr-defined]
    assert layers["transpose"].prefix_tokens == 0  # type: ignore[attr-defined]  # before the cat
    assert layers["patch"].axes == "CHW"  # type: ignore[attr-defined]
    assert (layers["getitem:1"].axes, layers["head"].axes) == ("vector", "vector")  # type: ignore[attr-defined]
    # (3, B, heads, N, d): the batch is not first, so the stack is not a layer.
    assert "blocks.0.attn.permute" not in layers
    # An attention matrix (B, heads, N, N) and (D, N) transposed tokens: listed, ambiguous.
    assert layers["blocks.0.attn.softmax"].axes is None  # type: ignore[attr-defined]
    assert "transposed" in layers["flatten"].why  # type: ignore[attr-defined]


def test_a_channels_last_block_is_hwc_and_an_input_independent_node_is_not_listed() -> None:
    layers = infos(TinyConvNeXt())
    for name, units in (("permute", 5), ("norm", 5), ("fc1", 10), ("fc2", 5)):
        info = layers[name]
        assert (info.axes, info.units, info.map_shape) == ("HWC", units, (units, 4, 4))  # type: ignore[attr-defined]
    assert (layers["permute:1"].axes, layers["mul"].axes) == ("CHW", "CHW")  # type: ignore[attr-defined]
    assert "reshape" not in layers  # gamma.reshape(1, -1, 1, 1): the same for every input


def test_unlisted_nodes_are_a_clear_error_naming_why() -> None:
    vit = LayerIndex(TinyViT(), SHAPE, "vit")
    with pytest.raises(LayerShapeError, match="first axis is the batch"):
        vit.info("blocks.0.attn.permute")
    convnext = LayerIndex(TinyConvNeXt(), SHAPE, "convnext")
    with pytest.raises(LayerShapeError, match="first axis is the batch"):
        feature_maps(convnext.model, torch.rand(1, *SHAPE), ["reshape"])


def test_any_other_permutation_is_ambiguous_and_refused_naming_the_fix() -> None:
    model = OddPermute()
    layers = infos(model)
    assert layers["permute"].axes is None and "(0, 3, 2, 1)" in layers["permute"].why  # type: ignore[attr-defined]
    x = torch.rand(1, *SHAPE)
    with pytest.raises(AmbiguousAxesError, match=r"ambiguous.*declare.*axes = \{\"permute\""):
        feature_maps(model, x, ["permute"])
    with pytest.raises(AmbiguousAxesError):
        objectives.channel("permute", 0).validate(layer_index(model))


def test_declared_axes_win_and_resolve_ambiguity() -> None:
    declared = parse_axes_table({"perm*": "HWC", "conv": {"axes": "CHW"}})
    layers = infos(OddPermute(), axes=declared)
    assert (layers["permute"].axes, layers["permute"].map_shape) == ("HWC", (4, 4, 4))  # type: ignore[attr-defined]
    vit = infos(
        TinyViT(),
        axes=parse_axes_table(
            {"blocks.0.attn.softmax": {"axes": "tokens", "token_grid": [4, 4], "prefix_tokens": 1}}
        ),
    )
    # A declaration that does not fit the shape leaves the axes unknown, saying why.
    assert vit["blocks.0.attn.softmax"].axes is None  # type: ignore[attr-defined]
    assert "declared" in vit["blocks.0.attn.softmax"].why  # type: ignore[attr-defined]


def test_the_axes_table_is_checked() -> None:
    assert parse_axes_table({"a.*": "tokens"})["a.*"].token_grid is None
    for bad in (
        {"a": "NCHW"},
        {"a": {"axes": "HWC", "token_grid": [2, 2]}},
        {"a": {"axes": "tokens", "token_grid": [2]}},
        {"a": {"axes": "tokens", "prefix_tokens": -1}},
        {"a": {"axes": "tokens", "grid": [2, 2]}},
        ["a"],
    ):
        with pytest.raises(RegistryConfigError):
            parse_axes_table(bad)


def test_token_counts_fit_grids_of_the_input() -> None:
    assert token_grids(197, (224, 224)) == [(1, (14, 14))]
    assert token_grids(50, (224, 224)) == [(1, (7, 7))]
    assert token_grids(768, (224, 224)) == []


def test_unit_maps_drop_prefix_tokens_and_put_units_first() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 + 2×2 tokens, D=3
    maps = unit_maps(x, LayerAxes("tokens", 3, (2, 2), 1))
    assert maps.shape == (2, 3, 2, 2)
    assert torch.equal(maps[1, 2], x[1, 1:, 2].reshape(2, 2))
    hwc = torch.randn(2, 3, 4, 5)
    assert torch.equal(unit_maps(hwc, LayerAxes("HWC", 5, (3, 4))), hwc.permute(0, 3, 1, 2))
    assert unit_maps(torch.ones(2, 7), LayerAxes("vector", 7, (1, 1))).shape == (2, 7, 1, 1)
    with pytest.raises(AmbiguousAxesError):
        unit_maps(x, LayerAxes(None, why="test"))


def test_feature_maps_of_a_tokens_layer_are_the_hand_reshaped_tokens() -> None:
    model = TinyViT()
    x = torch.rand(1, *SHAPE)
    with torch.no_grad():
        raw = capture_activations(model, x, ["blocks.1.mlp.fc1"])["blocks.1.mlp.fc1"]  # 17 × 10
    by_hand = raw[0, 1:, :].reshape(GRID, GRID, 10).permute(2, 0, 1)  # no class token
    out = layer_activations(model, x, ["blocks.1.mlp.fc1"])["blocks.1.mlp.fc1"]
    assert torch.allclose(out[0], by_hand)
    (maps,) = feature_maps(model, x, ["blocks.1.mlp.fc1"])
    assert maps.shape == (10, GRID, GRID) and len(maps.channels) == 10
    assert maps.layout.tile == (GRID, GRID)
    flat = by_hand.flatten(1)
    expected = torch.stack([flat.amin(1), flat.amax(1), flat.mean(1)], dim=1)
    assert torch.allclose(maps.stats, expected, atol=1e-6)


def test_feature_maps_of_a_channels_last_layer_are_its_channels() -> None:
    model = TinyConvNeXt()
    x = torch.rand(1, *SHAPE)
    with torch.no_grad():
        raw = capture_activations(model, x, ["fc1"])["fc1"]  # (1, 4, 4, 10)
    out = layer_activations(model, x, ["fc1"])["fc1"]
    assert torch.equal(out[0], raw[0].permute(2, 0, 1))


def test_a_channel_objective_on_tokens_maximises_the_feature_mean_over_the_grid() -> None:
    model = TinyViT()
    layer, feature = "blocks.0.mlp.fc1", 3
    settings = RenderSettings(steps=12, transforms="none", precision="fp32", lr=0.1)
    result = visualize(
        model,
        objectives.channel(layer, feature),
        input_shape=SHAPE,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        settings=settings,
    )
    # Independently: the final image through the model, feature 3 of the 16 grid tokens.
    x = (result.images - 0.5) / 0.25
    with torch.no_grad():
        raw = capture_activations(model, x, [layer])[layer]
    assert result.objectives[0] == pytest.approx(float(raw[0, 1:, feature].mean()), abs=1e-5)
    assert result.objectives[0] > result.initial_objectives[0]


def test_a_neuron_on_tokens_is_one_grid_token() -> None:
    model = TokenNet()
    index = layer_index(model, SHAPE)
    info = index.info("embed")
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        act = unit_maps(capture_activations(model, x, ["embed"])["embed"], info)
    batch = objectives.Batch(x, {"embed": act}, torch.zeros(2, dtype=torch.long), torch.zeros(2))
    value, _ = objectives.neuron("embed", 0, y=1, x=3)(batch)
    patch = x[:, 0, 1 * PATCH : 2 * PATCH, 3 * PATCH : 4 * PATCH].sum(dim=(1, 2))
    assert torch.allclose(value, patch, atol=1e-5)  # token 1 + 1·4 + 3: red of patch (1, 3)
    with pytest.raises(Exception, match="out of range"):
        objectives.neuron("embed", 0, y=4).validate(index)


def test_exemplars_of_a_tokens_layer_rank_images_by_the_feature() -> None:
    # Four images; image 2 has the reddest patch, at grid (1, 3); image 0 is the reddest on
    # average. The class token (1000 on every feature) must not count, nor be a "channel".
    images = torch.zeros(4, *SHAPE)
    images[0, 0] = 0.5
    images[1, 1] = 1.0
    images[2, 0, 1 * PATCH : 2 * PATCH, 3 * PATCH : 4 * PATCH] = 1.0
    images[3, 2] = 1.0
    model = TokenNet()
    index = layer_index(model, SHAPE)
    batches = [(images, torch.arange(4), torch.ones(4, dtype=torch.bool))]
    by_max = mine(index, batches, ["embed"], k=4, how="max")["embed"].top
    assert by_max.scores.shape == (3, 4)  # three features, not seventeen tokens
    assert int(by_max.index[0, 0]) == 2 and by_max.position[0, 0].tolist() == [1, 3]
    assert float(by_max.scores[0, 0]) == pytest.approx(16.0)  # 4×4 red pixels of one patch
    by_mean = mine(index, batches, ["embed"], k=4, how="mean")["embed"].top
    assert int(by_mean.index[0, 0]) == 0 and float(by_mean.scores[0, 0]) == pytest.approx(8.0)
    assert int(by_mean.index[1, 0]) == 1 and int(by_mean.index[2, 0]) == 3


def test_grad_cam_on_a_tokens_layer_points_at_the_planted_patch() -> None:
    model = TokenNet()
    x = torch.zeros(1, *SHAPE)
    x[0, 0, 2 * PATCH : 3 * PATCH, 1 * PATCH : 2 * PATCH] = 1.0  # red in patch (2, 1)
    result = attribute(model, x, "gradcam", layer="embed", targets=[0])
    cam = result.maps[0]
    assert cam.shape == (IMAGE, IMAGE)
    y, xx = divmod(int(cam.argmax()), IMAGE)
    assert (y // PATCH, xx // PATCH) == (2, 1)
    # By hand: class 0 is the mean red over 16 tokens, so each token's feature-0 gradient is
    # 1/16 (the others' 0) and the map at the layer is relu(A_0 / 16): 1 at patch (2, 1), 0
    # elsewhere (the class token, at 1000, left out); then upsampled bilinearly.
    at_layer = torch.zeros(1, 1, GRID, GRID)
    at_layer[0, 0, 2, 1] = 1.0
    expected = F.interpolate(at_layer, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)
    assert torch.allclose(cam, expected[0, 0], atol=1e-5)
    guided = attribute(model, x, "guided_gradcam", layer="embed", targets=[0]).maps[0]
    assert guided.shape == (IMAGE, IMAGE) and torch.isfinite(guided).all()


class Untraceable(nn.Module):
    """``inner`` behind a branch on the input's values: FX cannot trace it (hooks instead)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > -1e9:
            return self.inner(x)
        return self.inner(-x)


def test_without_a_graph_module_types_and_token_counts_give_the_axes() -> None:
    tokens = LayerIndex(Untraceable(TokenNet()), SHAPE, "hooks")
    assert not tokens.traceable
    found = {info.name: info for info in tokens.layers()}
    embed = found["inner.embed"]
    assert (embed.axes, embed.units, embed.token_grid, embed.prefix_tokens) == (
        "tokens",
        3,
        (4, 4),
        1,
    )
    assert found["inner.patch"].axes == "CHW"
    convnext = {info.name: info for info in LayerIndex(Untraceable(TinyConvNeXt()), SHAPE).layers()}
    for name in ("inner.norm", "inner.fc1", "inner.act", "inner.fc2"):
        assert convnext[name].axes == "HWC", name
    assert (convnext["inner.dwconv"].axes, convnext["inner.head"].axes) == ("CHW", "vector")


def test_torchvision_vit_lists_tokens() -> None:
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=20, mlp_dim=40
    )
    layers = infos_of(model, (3, 32, 32))
    mlp = layers["encoder.layers.encoder_layer_0.mlp.0"]
    assert (mlp.axes, mlp.units, mlp.token_grid, mlp.prefix_tokens) == ("tokens", 40, (4, 4), 1)
    assert layers["encoder.ln"].axes == "tokens"


@pytest.mark.slow
def test_torchvision_swin_stages_are_channels_last() -> None:
    layers = infos_of(swin_t(weights=None), (3, 64, 64))
    for stage, (side, units) in {0: (16, 96), 1: (16, 96), 3: (8, 192), 7: (2, 768)}.items():
        info = layers[f"features.{stage}"]
        assert (info.axes, info.map_shape) == ("HWC", (units, side, side))
    assert layers["permute"].axes == "CHW" and layers["head"].axes == "vector"


def infos_of(model: nn.Module, shape: tuple[int, int, int]) -> dict:  # type: ignore[type-arg]
    return {info.name: info for info in LayerIndex(model, shape, "tv").layers()}


@pytest.mark.parametrize("method", ["gradcam_plus_plus", "layercam", "scorecam"])
def test_the_cam_family_on_a_tokens_layer_equals_it_on_the_conv_grid_it_carries(
    method: str,
) -> None:
    # `embed` is the identity on `patch`'s tokens (the class token apart, which the head never
    # reads): the same activations and gradients, laid out as 16 tokens rather than a 4×4 grid.
    model = TokenNet()
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(3))
    on_tokens = attribute(model, x, method, layer="embed", targets=[0, 1]).maps
    on_grid = attribute(model, x, method, layer="patch", targets=[0, 1]).maps
    assert on_tokens.shape == (2, IMAGE, IMAGE) and on_tokens.abs().sum() > 0
    torch.testing.assert_close(on_tokens, on_grid, rtol=1e-4, atol=1e-6)


class FeaturesFirstTokens(nn.Module):
    """Tokens laid out ``(D, N)``: a patch conv's ``flatten(2)`` with a class token
    concatenated last-axis first, never transposed to ``(N, D)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.patch = nn.Conv2d(3, 5, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 5, 1))
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2)  # (B, 5, 16)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=2)
        return self.head(tokens.mean(dim=2))


def test_a_features_first_token_layout_is_refused_until_declared_then_read_unit_first() -> None:
    model = FeaturesFirstTokens()
    assert infos(model)["cat"].axes is None  # type: ignore[attr-defined]  # (5, 17): ambiguous
    declared = parse_axes_table(
        {
            "cat": {
                "axes": "tokens",
                "token_grid": [4, 4],
                "prefix_tokens": 1,
                "features_first": True,
            }
        }
    )
    index = LayerIndex(model, SHAPE, "first", declared)
    (info,) = index.usable(["cat"])
    assert (info.axes, info.features_first, info.map_shape) == ("tokens", True, (5, GRID, GRID))
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        out = index.capture(x, ["cat", "patch"])
    # The features on the token grid are the patch conv's channels: the same numbers.
    torch.testing.assert_close(unit_maps(out["cat"], info), out["patch"])
    with pytest.raises(RegistryConfigError, match="features_first"):
        parse_axes_table({"cat": {"axes": "HWC", "features_first": True}})
