"""Filter-weight grids of convolutions with hand-set kernels, whose pixels are computed by hand."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnviz.errors import InvalidArgumentError, NoKernelError, UnknownLayerError
from cnnviz.imaging.heatmap import LEVELS, palette
from cnnviz.weights import filter_weights, kernel_layers


class RgbNet(nn.Module):
    """A first conv reading RGB, then a 1×1 conv over 4 channels, a grouped one, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 2, 2, bias=False)
        self.mix = nn.Conv2d(2, 4, 1)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2, bias=False)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.stem.weight.zero_()
            self.stem.weight[0, 0] = 1.0  # filter 0: red +1 everywhere
            self.stem.weight[1, 2, 0, 0] = -0.5  # filter 1: blue -0.5 top-left
            self.grouped.weight.zero_()
            self.grouped.weight[2, :, 0, 0] = torch.tensor([0.1, 5.0])  # group 1: inputs 2, 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(torch.cat([self.mix(self.stem(x))[:, :2]] * 2, dim=1))
        return self.head(y.mean(dim=(2, 3)))


def pixel(weights: object, tile: int, y: int = 0, x: int = 0) -> list[int]:
    """The RGB of pixel (y, x) of a tile (unscaled coordinates) of a FilterWeights grid."""
    oy, ox = weights.layout.origin(tile)  # type: ignore[attr-defined]
    s = weights.scale  # type: ignore[attr-defined]
    return weights.rgb()[oy + y * s, ox + x * s].tolist()  # type: ignore[attr-defined]


def test_the_first_conv_is_rgb_tiles_symmetric_around_zero_per_filter() -> None:
    net = RgbNet()
    weights = filter_weights(net, "stem", scale=3)
    assert weights.mode == "rgb"
    assert weights.weight_shape == (2, 3, 2, 2)
    assert weights.layout.tile == (6, 6) and weights.filters == (0, 1)
    # Filter 0: red = 1 / (2·1) + 0.5 = 1 → 255; zero is mid-grey 0.5 → 128.
    assert pixel(weights, 0) == [255, 128, 128]
    # Filter 1 on its own scale m = 0.5: blue -0.5 → 0.0 → 0.
    assert pixel(weights, 1) == [128, 128, 0]
    assert pixel(weights, 1, 1, 1) == [128, 128, 128]
    assert weights.values.shape == (2, 3, 2, 2)
    assert torch.equal(weights.values, net.stem.weight)
    assert weights.stats[1].tolist() == pytest.approx([-0.5, 0.0, -0.5 / 12, 0.5])


def test_a_layer_scale_lets_filters_compare() -> None:
    weights = filter_weights(RgbNet(), "stem", normalize="layer", scale=1)
    # m = 1 for the layer: -0.5 → 0.25 → 64.
    assert pixel(weights, 1) == [128, 128, 64]


def test_slices_are_the_k_strongest_input_channels_labelled() -> None:
    net = RgbNet()
    with torch.no_grad():
        net.mix.weight.zero_()
        net.mix.weight[0, :, 0, 0] = torch.tensor([-3.0, 2.0])
        net.mix.weight[3, :, 0, 0] = torch.tensor([0.5, 0.25])
    weights = filter_weights(net, "mix", mode="slices", k=2, filters=[0, 3], colormap="gray")
    assert weights.mode == "slices"
    assert weights.filters == (0, 0, 3, 3)
    assert weights.input_channels == (0, 1, 0, 1)
    assert weights.layout.columns == 2  # one row per filter
    assert weights.values.flatten().tolist() == [-3.0, 2.0, 0.5, 0.25]
    grey = palette("gray")
    # Filter 0's scale is 3: -3 is the first level; 2 is floor((2 + 3) / 6 · 255) = 212.
    assert pixel(weights, 0) == grey[0].tolist()
    assert pixel(weights, 1) == grey[int(5 / 6 * LEVELS)].tolist()
    assert weights.stats[:, 0].tolist() == [-3.0, 2.0, 0.5, 0.25]


def test_grouped_slices_name_the_input_channel_of_the_group() -> None:
    weights = filter_weights(RgbNet(), "grouped", k=1, filters=[2])
    assert weights.groups == 2
    assert weights.input_channels == (3,)  # filter 2 is in group 1, which reads inputs 2 and 3
    assert weights.values.flatten().tolist() == [5.0]


def test_a_depthwise_conv_has_one_slice_per_filter_in_a_square_grid() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3, groups=6))
    weights = filter_weights(conv, "1")
    assert weights.mode == "slices"
    assert weights.input_channels == (0, 1, 2, 3, 4, 5)
    assert (weights.layout.rows, weights.layout.columns) == (2, 3)


def test_norm_is_the_l2_norm_over_input_channels() -> None:
    net = RgbNet()
    with torch.no_grad():
        net.mix.weight.zero_()
        net.mix.weight[1, :, 0, 0] = torch.tensor([3.0, 4.0])
    weights = filter_weights(net, "mix", mode="norm", filters=[1, 0])
    assert weights.values.flatten().tolist() == [5.0, 0.0]
    assert weights.stats[0, 3].item() == pytest.approx(5.0)
    viridis = palette("viridis")
    assert pixel(weights, 0) == viridis[LEVELS - 1].tolist()
    assert pixel(weights, 1) == viridis[0].tolist()


def test_top_k_picks_the_filters_with_the_largest_norm() -> None:
    net = RgbNet()
    weights = filter_weights(net, "stem", top_k=1)
    assert weights.filters == (0,)  # norm 2 against 0.5


def test_a_one_channel_first_conv_shows_one_signed_slice_per_filter() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3))
    weights = filter_weights(conv, "0")
    assert weights.mode == "slices"
    assert weights.input_channels == (0, 0, 0, 0)
    with pytest.raises(InvalidArgumentError, match="3 input channels"):
        filter_weights(conv, "0", mode="rgb")


def test_layers_without_kernels_name_those_with_one() -> None:
    net = RgbNet()
    assert kernel_layers(net) == ["stem", "mix", "grouped"]
    with pytest.raises(NoKernelError, match=r"Linear.*'stem', 'mix', 'grouped'"):
        filter_weights(net, "head")
    with pytest.raises(UnknownLayerError, match="did you mean 'stem'"):
        filter_weights(net, "stm")
    blocks = nn.Sequential(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()), nn.Flatten())
    with pytest.raises(NoKernelError, match=r"kernels inside it are '0\.0'"):
        filter_weights(blocks, "0")
    with pytest.raises(NoKernelError, match="no 2-D convolution"):
        filter_weights(nn.Sequential(nn.Linear(2, 2)), "0")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"filters": [2]}, "filter 2 is out of range"),
        ({"filters": []}, "empty"),
        ({"filters": [0], "top_k": 1}, "not both"),
        ({"k": 0}, "k must be"),
        ({"scale": 0}, "scale must be"),
        ({"normalize": "tile"}, "normalize"),
        ({"colormap": "nope"}, "unknown colormap"),
        ({"scale": 64, "max_grid_pixels": 1000}, "over the limit"),
    ],
)
def test_bad_options_are_invalid_arguments(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        filter_weights(RgbNet(), "stem", **options)  # type: ignore[arg-type]


def test_reading_weights_leaves_the_model_untouched() -> None:
    net = RgbNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    filter_weights(net, "mix", mode="norm")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0", "resnet18"])
def test_torchvision_convs_draw_in_every_mode(arch: str) -> None:
    net = getattr(torchvision.models, arch)()
    names = kernel_layers(net)
    first = filter_weights(net, names[0])
    assert first.mode == "rgb" and first.pixels.shape[-1] == 3
    for name in names[1:4]:
        for mode in ("slices", "norm"):
            weights = filter_weights(net, name, mode=mode)  # type: ignore[arg-type]
            assert weights.pixels.shape == weights.layout.size


class Reused(nn.Module):
    """A conv called twice, and a functional op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x) * 2)


def test_a_later_call_or_a_functional_op_has_no_weights_of_its_own() -> None:
    model = Reused()
    assert filter_weights(model, "conv").weight_shape == (2, 2, 3, 3)
    with pytest.raises(NoKernelError, match=r"call 1 of module 'conv'.*ask for 'conv'"):
        filter_weights(model, "conv:1")
    with pytest.raises(NoKernelError, match="functional op"):
        filter_weights(model, "mul")
    with pytest.raises(UnknownLayerError, match="did you mean 'conv'"):
        filter_weights(model, "conv2")
