"""Layer names are the modules' own names, and a name's activation is that module's output.

Every check compares the index's activations with forward hooks on ``named_modules()``: the
ground truth of "the output of the module with this name".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torchvision
from torch import nn

from cnnviz.layers import LayerIndex, layer_index


def hooked_outputs(model: nn.Module, x: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """``{(module, call): output}`` of every tensor a named module returned, copied at once."""
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            call = counts.get(name, 0)
            counts[name] = call + 1
            if isinstance(output, torch.Tensor):
                outputs[(name, call)] = output.detach().clone()

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def assert_names_match_hooks(
    model: nn.Module, input_shape: tuple[int, int, int], *, seed: int = 0
) -> LayerIndex:
    """Every module output the index names equals the hook's output of that module and call;
    every module that returned a tensor is addressable under its own name."""
    torch.manual_seed(seed)
    x = torch.randn(2, *input_shape)
    index = LayerIndex(model, input_shape, "m")
    names = [info.name for info in index.layers()]
    expected = hooked_outputs(model, x)
    with torch.inference_mode():
        got = index.capture(x, names)
    compared = 0
    for name in names:
        where = index.module_of(name)
        if where is None:
            continue
        module, call = where
        if call == 0:
            assert name == module
        assert (module, call) in expected, f"{name} is no output of module {module} call {call}"
        torch.testing.assert_close(got[name], expected[(module, call)], rtol=1e-5, atol=1e-5)
        compared += 1
    first_calls = {module for module, call in expected if call == 0}
    missing = first_calls - set(names)
    assert not missing, f"modules without a layer of their own name: {sorted(missing)[:5]}"
    assert compared >= len(first_calls)
    return index


class CaffeNames(nn.Module):
    """Modules named as Caffe ports name them: every name ends in ``_<digit>``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1_1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1_2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1_2(self.relu(self.conv1_1(x))))


def test_modules_ending_in_underscore_digits_keep_their_names() -> None:
    index = assert_names_match_hooks(CaffeNames(), (3, 8, 8))
    assert [(info.name, info.shape) for info in index.layers()] == [
        ("conv1_1", (8, 8, 8)),
        ("relu", (8, 8, 8)),
        ("conv1_2", (16, 8, 8)),
        ("relu:1", (16, 8, 8)),
    ]
    assert index.module_of("relu:1") == ("relu", 1)


class Siblings(nn.Module):
    """``block_1`` and ``block`` side by side, ``block`` called twice, ops between them."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True))
        self.block_1 = nn.Conv2d(4, 4, 3, padding=1)
        self.block_2 = nn.Conv2d(4, 4, 1)
        self.add = nn.Identity()  # a module named like the op that follows it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.block(x)
        b = self.block_1(a)
        c = self.block(b + a)
        return self.block_2(self.add(c) + x)


def test_reused_modules_and_ops_never_take_a_module_name() -> None:
    index = assert_names_match_hooks(Siblings(), (4, 5, 5))
    names = [info.name for info in index.layers()]
    assert names == [
        "block",
        "block.0",
        "block.1",
        "block_1",
        "add()",
        "block.0:1",
        "block.1:1",
        "block:1",
        "add",
        "add():1",
        "block_2",
    ]
    assert index.module_of("block:1") == ("block", 1)
    assert index.module_of("add()") is None
    x = torch.randn(1, 4, 5, 5)
    model = index.model
    with torch.inference_mode():
        a = model.block(x.clone())
        expected = model.block_1(a) + a
        got = index.capture(x, ["add()"])["add()"]
    torch.testing.assert_close(got, expected)


class OddKeys(nn.Module):
    """ModuleDict keys may hold any character but a dot: even the suffixes' own."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"conv": nn.Conv2d(1, 2, 1), "conv:1": nn.Conv2d(2, 2, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.parts["conv"]
        return self.parts["conv:1"](conv(conv(x[:, :1].expand(-1, 1, -1, -1)).mean(1, True)))


def test_suffixes_step_around_module_names_that_look_like_them() -> None:
    index = assert_names_match_hooks(OddKeys(), (1, 3, 3))
    names = [info.name for info in index.layers()]
    assert "parts.conv:1" in names and "parts.conv:1'" in names
    assert index.module_of("parts.conv:1") == ("parts.conv:1", 0)
    assert index.module_of("parts.conv:1'") == ("parts.conv", 1)


class Heads(nn.Module):
    """A face detector's shape: one trunk, three heads, a tuple out."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8))
        self.box = nn.Conv2d(8, 4, 1)
        self.landmarks = nn.Conv2d(8, 10, 1)
        self.prob = nn.Sequential(nn.Conv2d(8, 2, 1), nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.box(h), self.landmarks(h), self.prob(h)


def test_a_model_with_a_tuple_output_has_its_heads_as_layers() -> None:
    index = assert_names_match_hooks(Heads(), (3, 6, 6))
    shapes = {info.name: info.shape for info in index.layers()}
    assert shapes["box"] == (4, 6, 6)
    assert shapes["landmarks"] == (10, 6, 6)
    assert shapes["prob"] == (2, 6, 6)


class Branchy(nn.Module):
    """Data-dependent control flow: FX cannot trace it, hooks take over with the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(1, 3, 1)
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv_1(x))
        if y.sum() > -1e9:
            y = self.act(self.conv(y))
        return y


def test_hook_fallback_names_modules_and_their_later_calls_the_same_way() -> None:
    index = assert_names_match_hooks(Branchy(), (1, 4, 4))
    assert not index.traceable
    assert [info.name for info in index.layers()] == ["conv_1", "act", "conv", "act:1"]


def test_an_in_place_op_after_a_layer_does_not_change_its_activation() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.zero_()
    x = torch.ones(1, 1, 2, 2)
    with torch.inference_mode():
        out = layer_index(model, (1, 2, 2)).capture(x, ["0", "1"])
    assert torch.equal(out["0"], torch.full((1, 2, 2, 2), -1.0))
    assert torch.equal(out["1"], torch.zeros(1, 2, 2, 2))


TORCHVISION: Sequence[tuple[str, int]] = [
    ("resnet18", 64),
    ("vgg11", 32),
    ("mobilenet_v3_small", 64),
    ("efficientnet_b0", 64),
    ("densenet121", 64),
    ("googlenet", 64),
    ("shufflenet_v2_x0_5", 64),
    ("squeezenet1_0", 64),
]


@pytest.mark.parametrize(("arch", "size"), TORCHVISION, ids=[a for a, _ in TORCHVISION])
def test_torchvision_layers_are_their_modules_outputs(arch: str, size: int) -> None:
    kwargs = {"init_weights": False} if arch == "googlenet" else {}  # its aux heads: train only
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    index = assert_names_match_hooks(model, (3, size, size))
    assert index.traceable
