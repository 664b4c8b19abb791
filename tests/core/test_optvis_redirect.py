"""Redirected ReLU gradients: Lucid's rule, and a graph rewrite that leaves the model alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from cnnviz.optvis.redirect import redirect_relus, redirected_relu, redirected_relu6


def _grad(function: object, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    function(x).backward(upstream)  # type: ignore[operator]
    assert x.grad is not None
    return x.grad


def test_forward_is_the_plain_activation() -> None:
    x = torch.linspace(-8, 8, 33).view(1, 33)
    assert torch.equal(redirected_relu(x), F.relu(x))
    assert torch.equal(redirected_relu6(x), F.relu6(x))


def test_items_with_a_live_gradient_keep_the_plain_one() -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0]])
    upstream = torch.tensor([[-1.0, -1.0, 1.0]])  # loss gradients, as the optimizer sees them
    assert _grad(redirected_relu, x, upstream).tolist() == [[0.0, -1.0, 0.0]]


def test_dead_items_get_the_gradient_except_where_it_pushes_further_down() -> None:
    # Row 0 is alive (as above); row 1 is all negative: its plain gradient is zero.
    x = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -2.0, -3.0]])
    upstream = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, 1.0, -0.5]])
    grad = _grad(redirected_relu, x, upstream)
    assert grad[0].tolist() == [0.0, -1.0, 0.0]
    # A negative loss gradient raises the input: let it through; a positive one is blocked.
    assert grad[1].tolist() == [-1.0, 0.0, -0.5]


def test_relu6_redirects_at_both_bounds() -> None:
    x = torch.tensor([[-1.0, 7.0, 8.0]])
    upstream = torch.tensor([[-1.0, 1.0, -1.0]])
    # All saturated: -1 at x=-1 raises it (kept); +1 at 7 lowers it into range (kept);
    # -1 at 8 pushes it further up (blocked).
    assert _grad(redirected_relu6, x, upstream).tolist() == [[-1.0, 1.0, 0.0]]


class _Mixed(nn.Module):
    """ReLUs as a module (in place), a function, a method, and a ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU(inplace=True)
        self.act6 = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y = F.relu(y - 1.0) + torch.relu(y) + (y - 2.0).relu()
        return self.act6(y)


def test_rewrite_replaces_every_relu_in_a_copy() -> None:
    model = _Mixed()
    traced = fx.symbolic_trace(model)
    code_before = traced.code
    redirected, count = redirect_relus(traced)
    assert count == 5
    assert traced.code == code_before  # the original graph module is untouched
    assert redirected.conv is model.conv  # shares the weights
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(redirected(x), model(x))
    targets = [n.target for n in redirected.graph.nodes if n.op != "placeholder"]
    assert "act" not in targets and "relu" not in targets and F.relu not in targets


class SoftActivations(nn.Module):
    """A conv followed by each activation whose gradient lives on below zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.leaky = nn.LeakyReLU(0.1)
        self.prelu = nn.PReLU(4, init=0.25)
        self.gelu = nn.GELU()
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-10.0)  # every input of the activations is negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gelu(self.prelu(self.leaky(self.conv(x))))


def test_leaky_prelu_and_gelu_are_left_alone_and_still_pass_gradient() -> None:
    model = SoftActivations()
    traced = fx.symbolic_trace(model)
    rewritten, count = redirect_relus(traced)
    assert count == 0
    x = torch.rand(1, 1, 3, 3, requires_grad=True)
    rewritten(x).sum().backward()
    assert x.grad is not None and bool((x.grad != 0).all())
