"""Feature-map grids on tiny models whose activations are computed by hand."""

from __future__ import annotations

import io
from collections.abc import Iterator

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnviz.errors import (
    AmbiguousAxesError,
    InvalidArgumentError,
    UnknownLayerError,
)
from cnnviz.featuremaps import GridOptions, feature_map_grid, feature_maps, select_channels

WHITE = [255, 255, 255]


class OneByOne(nn.Module):
    """A 1×1 conv from one channel to three: ``x``, ``4 - x`` and ``2x``; then a ReLU, a
    per-image flatten to (C, H·W), and a linear head.

    For the input ``[[0, 1], [2, 4]]`` the conv's channels are ``[[0, 1], [2, 4]]``,
    ``[[4, 3], [2, 0]]`` and ``[[0, 2], [4, 8]]``: min 0, max 4 / 4 / 8, mean 1.75 / 2.25 / 3.5.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(12, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 4.0, 0.0]))
            self.head.weight.fill_(1.0)
            self.head.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        rows = y.flatten(2)  # (N, C, H·W): not a feature map
        return self.head(rows.flatten(1))


class Untraceable(OneByOne):
    """The same network with control flow on a value, so FX fails and hooks are used."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        if y.sum() > 0:
            y = y * 1.0
        return self.head(y.flatten(1))


X = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # (1, 1, 2, 2)
CONV = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[4.0, 3.0], [2.0, 0.0]], [[0.0, 2.0], [4.0, 8.0]]])


def expected_colours(values: torch.Tensor, name: str = "viridis") -> np.ndarray:
    """Colours by matplotlib itself, with the ranges worked out by hand (no bin edges hit)."""
    cmap = matplotlib.colormaps[name].resampled(255)
    return np.asarray(cmap(values.double().numpy(), bytes=True))[..., :3]


def tile(rgb: torch.Tensor, y: int, x: int, size: int = 2) -> np.ndarray:
    return rgb[y : y + size, x : x + size].numpy()


def test_stats_layout_and_exact_colours_per_channel() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["conv"])
    assert maps.name == "conv" and maps.shape == (3, 2, 2)
    assert maps.stats.tolist() == [[0.0, 4.0, 1.75], [0.0, 4.0, 2.25], [0.0, 8.0, 3.5]]
    layout = maps.layout
    assert (layout.rows, layout.columns, layout.tile, layout.padding) == (2, 2, (2, 2), 1)
    assert layout.channels == (0, 1, 2) and layout.size == (7, 7)
    rgb = maps.rgb()
    assert rgb.shape == (7, 7, 3) and rgb.dtype == torch.uint8
    for i, origin in enumerate([(1, 1), (1, 4), (4, 1)]):
        assert layout.origin(i) == origin
        span = CONV[i].max() - CONV[i].min()
        assert np.array_equal(tile(rgb, *origin), expected_colours(CONV[i] / span))
    # Padding and the empty fourth cell are white.
    assert rgb[0].tolist() == [WHITE] * 7 and rgb[4:6, 4:6].reshape(-1, 3).tolist() == [WHITE] * 4


def test_layer_normalisation_shares_one_range_whatever_the_selection() -> None:
    every_channel = GridOptions(normalize="layer", colormap="gray")
    (every,) = feature_maps(OneByOne(), X, ["conv"], every_channel)
    (one,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(channels=[1], normalize="layer"))
    assert np.array_equal(tile(every.rgb(), 1, 4), expected_colours(CONV[1] / 8, "gray"))
    assert np.array_equal(tile(one.rgb(), 1, 1), expected_colours(CONV[1] / 8))
    assert one.layout.channels == (1,) and one.stats.tolist() == [[0.0, 4.0, 2.25]]


def test_channel_lists_keep_their_order_without_repeats() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(channels=[2, 0, 2]))
    assert maps.channels == (2, 0)
    assert maps.stats[:, 2].tolist() == [3.5, 1.75]


def test_top_k_takes_the_highest_means_first() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(top_k=2))
    assert maps.channels == (2, 1)
    assert select_channels(torch.tensor([1.0, 5.0, 5.0]), top_k=9) == [1, 2, 0]


def test_a_channel_out_of_range_names_the_valid_range() -> None:
    with pytest.raises(InvalidArgumentError, match=r"channel 3 .* 'conv'.* 3 channels.*0\.\.2"):
        feature_maps(OneByOne(), X, ["conv"], GridOptions(channels=[0, 3]))


def test_columns_padding_and_scale_shape_the_grid() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(columns=3, padding=2, scale=3))
    layout = maps.layout
    assert (layout.rows, layout.columns, layout.tile, layout.padding) == (1, 3, (6, 6), 2)
    assert maps.indices.shape == (1 * 8 + 2, 3 * 8 + 2)
    rgb = maps.rgb()
    y, x = layout.origin(1)
    block = expected_colours(CONV[1] / 4).repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(tile(rgb, y, x, 6), block)


def test_several_layers_share_one_forward_pass() -> None:
    model = OneByOne()
    feature_maps(model, X, ["conv"])  # the first call learns the layers' axes, once per model
    calls: list[str] = []
    handle = model.conv.register_forward_hook(lambda *_: calls.append("conv"))
    try:
        maps = feature_maps(model, X, ["relu", "conv", "relu"])
    finally:
        handle.remove()
    assert [m.name for m in maps] == ["relu", "conv"]
    assert calls == ["conv"]
    assert maps[0].stats.tolist() == maps[1].stats.tolist()  # nothing negative to cut


def test_a_vector_layer_is_drawn_as_one_pixel_tiles() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["head"], GridOptions(top_k=1))
    # head = sum of all activations (7 + 9 + 14 = 30) + bias (0, -10)
    assert maps.shape == (2,) and maps.channels == (0,)
    assert maps.stats.tolist() == [[30.0, 30.0, 30.0]]
    assert maps.layout.tile == (1, 1)


def test_a_layer_that_is_not_a_feature_map_is_refused() -> None:
    # (C, H·W) per image: a transposed token layout, whose units cannot be told for sure.
    with pytest.raises(AmbiguousAxesError, match=r"flatten.*ambiguous.*\(D, N\).*declare"):
        feature_maps(OneByOne(), X, ["flatten"])


def test_an_unknown_layer_gets_suggestions() -> None:
    with pytest.raises(UnknownLayerError, match="'conv'"):
        feature_maps(OneByOne(), X, ["cnv"])


def test_options_are_checked_before_the_forward_pass() -> None:
    model = OneByOne()
    calls: list[int] = []
    handle = model.conv.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InvalidArgumentError, match="colormap"):
            feature_maps(model, X, ["conv"], GridOptions(colormap="nope"))
        with pytest.raises(InvalidArgumentError, match="not both"):
            feature_maps(model, X, ["conv"], GridOptions(channels=[0], top_k=1))
    finally:
        handle.remove()
    assert calls == []


def test_png_is_the_rgb_grid() -> None:
    (maps,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(colormap="inferno"))
    decoded = np.array(Image.open(io.BytesIO(maps.png())).convert("RGB"))
    assert np.array_equal(decoded, maps.rgb().numpy())


# --- the model is left as it was found ------------------------------------------------------


def hook_count(model: nn.Module) -> int:
    """Every per-module and global hook torch keeps."""
    per_module = sum(
        len(getattr(m, attr))
        for m in model.modules()
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )
    from torch.nn.modules import module as torch_module

    global_hooks = sum(
        len(getattr(torch_module, name))
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )
    return per_module + global_hooks


def modes(model: nn.Module) -> Iterator[tuple[str, bool]]:
    return ((name, m.training) for name, m in model.named_modules())


@pytest.mark.parametrize("cls", [OneByOne, Untraceable])
def test_no_hook_is_left_and_modes_and_grads_are_restored(cls: type[OneByOne]) -> None:
    model = cls().train()
    model.relu.eval()
    model.head.weight.requires_grad_(False)
    before_modes, before_grads = list(modes(model)), [p.requires_grad for p in model.parameters()]
    before_hooks = hook_count(model)
    (maps,) = feature_maps(model, X, ["conv"])
    assert maps.stats.tolist()[2] == [0.0, 8.0, 3.5]
    with pytest.raises(InvalidArgumentError):  # a failing call too
        feature_maps(model, X, ["conv"], GridOptions(channels=[7]))
    assert hook_count(model) == before_hooks
    assert list(modes(model)) == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_grads


def test_a_grid_of_activations_at_hand_is_the_same_grid() -> None:
    (from_model,) = feature_maps(OneByOne(), X, ["conv"], GridOptions(top_k=2))
    at_hand = feature_map_grid(CONV, "conv", GridOptions(top_k=2))
    assert at_hand.layout == from_model.layout
    assert torch.equal(at_hand.indices, from_model.indices)
    assert torch.equal(at_hand.stats, from_model.stats)
