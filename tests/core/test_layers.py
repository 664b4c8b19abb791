"""Layer addressing and activation capture, on tiny models with hand-set weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz import layers
from cnnviz.errors import UnknownLayerError
from cnnviz.layers import LayerIndex, capture_activations, layer_index, preserved_state


class TwoConvs(nn.Module):
    """x → conv_a (1×1, doubles channel 0) → relu → conv_b (1×1, sums channels) → + x[:, :1].

    With hand-set weights every activation is a closed form of the input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.conv_b = nn.Conv2d(2, 1, 1, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        with torch.no_grad():
            self.conv_a.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]).view(2, 2, 1, 1))
            self.conv_b.weight.fill_(1.0)
            self.head[1].weight.fill_(0.5)
            self.head[1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_b(self.relu(self.conv_a(x)))
        y = y + x[:, :1]
        return self.head(y)


class Counting(nn.Module):
    """Records how many times it ran: to see whether a forward stopped early."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class DataDependent(nn.Module):
    """A model FX cannot trace (control flow on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 1, bias=False)
        self.tail = Counting()
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        if y.sum() > 0:
            y = y * 2
        return self.tail(y)


class Truncated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Conv2d(1, 1, 1)
        self.late = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


def test_activations_match_the_hand_computed_values() -> None:
    model = TwoConvs()
    x = torch.stack([torch.full((4, 4), 1.5), torch.full((4, 4), -2.0)]).unsqueeze(0)
    out = capture_activations(model, x, ["conv_a", "relu", "conv_b", "add"])
    assert torch.allclose(out["conv_a"][0, 0], torch.full((4, 4), 3.0))
    assert torch.allclose(out["conv_a"][0, 1], torch.full((4, 4), 2.0))
    assert torch.allclose(out["conv_b"], torch.full((1, 1, 4, 4), 5.0))
    assert torch.allclose(out["add"], torch.full((1, 1, 4, 4), 6.5))
    assert list(out) == ["conv_a", "relu", "conv_b", "add"]


def test_layers_list_names_kinds_and_shapes() -> None:
    model = TwoConvs()  # the index holds it weakly
    index = LayerIndex(model, (2, 4, 4), "two")
    layers = {info.name: info for info in index.layers()}
    assert layers["conv_a"].kind == "Conv2d"
    assert layers["conv_a"].shape == (2, 4, 4)
    assert layers["add"].kind == "add"
    assert layers["head"].kind == "Sequential"
    assert layers["head"].shape == (3,)
    assert layers["head.1"].shape == (3,)
    assert "x" not in layers


def test_a_container_name_stands_for_its_last_node() -> None:
    model = TwoConvs()
    x = torch.rand(2, 2, 4, 4)
    out = capture_activations(model, x, ["head", "head.1"])
    assert torch.equal(out["head"], out["head.1"])
    assert torch.allclose(out["head"], model(x))


def test_unknown_layer_names_the_model_and_suggests_close_names() -> None:
    model = TwoConvs()  # the index holds it weakly
    index = LayerIndex(model, (2, 4, 4), "two")
    with pytest.raises(UnknownLayerError) as caught:
        index.resolve(["conv_c"])
    message = str(caught.value)
    assert "'conv_c'" in message and "'two'" in message
    assert "conv_a" in caught.value.suggestions
    assert caught.value.listing == ("layers", "two")  # the service names the route


def test_the_forward_stops_at_the_deepest_requested_layer() -> None:
    model = Truncated()
    calls: list[str] = []
    model.late.register_forward_hook(lambda *_: calls.append("late"))
    capture_activations(model, torch.rand(1, 1, 3, 3), ["early"])
    assert calls == []
    capture_activations(model, torch.rand(1, 1, 3, 3), ["late"])
    assert calls == ["late"]


def test_untraceable_models_fall_back_to_hooks_and_remove_them() -> None:
    model = DataDependent()
    index = layer_index(model, (1, 2, 2))
    assert not index.traceable
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    calls_before = model.tail.calls  # the index ran one forward to find the modules' calls
    out = index.capture(torch.ones(1, 1, 2, 2), ["first"])
    assert torch.allclose(out["first"][0, 1], torch.full((2, 2), 3.0))
    # The forward stopped once "first" was captured: the tail never ran.
    assert model.tail.calls == calls_before
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert [info.name for info in index.layers()] == ["first", "tail"]


def test_hooks_are_removed_even_when_the_forward_fails() -> None:
    model = DataDependent()
    index = layer_index(model, (1, 2, 2))
    with pytest.raises(RuntimeError):
        index.capture(torch.ones(1, 3, 2, 2), ["tail"])  # wrong channel count
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_capture_leaves_modes_and_requires_grad_as_found() -> None:
    model = TwoConvs().train()
    model.conv_b.eval()
    model.conv_a.weight.requires_grad_(False)
    capture_activations(model, torch.rand(1, 2, 4, 4), ["conv_b"])
    assert model.training and model.conv_a.training and not model.conv_b.training
    assert not model.conv_a.weight.requires_grad and model.conv_b.weight.requires_grad


def test_capture_of_a_model_in_eval_mode_switches_nothing_and_leaves_it_as_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = TwoConvs().eval()
    model.conv_a.weight.requires_grad_(False)
    x = torch.rand(1, 2, 4, 4)
    layer_index(model)  # indexed (tracing keeps the modes on its own)

    def switched(_: nn.Module) -> None:
        raise AssertionError("a model in eval mode was switched and restored")

    # Nothing to switch: no save-and-restore of modes and requires_grad, which a job that
    # froze the same model in another thread would see undone.
    monkeypatch.setattr(layers, "preserved_state", switched)
    out = capture_activations(model, x, ["conv_b"])["conv_b"]
    assert torch.equal(out, model.conv_b(model.relu(model.conv_a(x))))
    assert not any(module.training for module in model.modules())
    assert not model.conv_a.weight.requires_grad and model.conv_b.weight.requires_grad


def test_preserved_state_restores_after_an_exception() -> None:
    model = TwoConvs().train()
    with pytest.raises(ValueError), preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(False)
        assert not model.training
        raise ValueError("boom")
    assert model.training
    assert all(param.requires_grad for param in model.parameters())


def test_gradients_flow_to_the_input() -> None:
    model = TwoConvs()
    x = torch.full((1, 2, 4, 4), 1.0, requires_grad=True)
    capture_activations(model, x, ["conv_b"])["conv_b"].sum().backward()
    assert x.grad is not None
    # d(sum conv_b)/dx0 = 2 (conv_a doubles channel 0, relu passes, conv_b sums).
    assert torch.allclose(x.grad[0, 0], torch.full((4, 4), 2.0))


def test_one_extractor_serves_a_set_of_layers_in_any_order_or_spelling() -> None:
    model = TwoConvs()  # the index holds it weakly
    index = LayerIndex(model, (2, 4, 4), "two")
    first = index.extractor(["conv_b", "conv_a"])
    assert index.extractor(["conv_a", "conv_b"]) is first
    assert index.extractor(["head"]) is index.extractor(["head.1"])
    index.layers()  # containers and nodes together: still one trace of every node
    assert len(index._extractors) == 3
