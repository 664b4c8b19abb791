"""Batch norms folded into convolutions: the same function, the original left alone, and
what the optimization steps run."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import fx, nn

from cnnviz.optvis import RenderSettings, objectives, visualize
from cnnviz.optvis.fold import fold_batch_norms
from cnnviz.optvis.stepgraph import step_graphs


def _net() -> nn.Module:
    """conv → bn → relu → conv → bn, with batch-norm statistics far from the identity."""
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(4, 5, 3, bias=False),
            bn2=nn.BatchNorm2d(5),
        )
    )
    for bn in (net.bn1, net.bn2):
        assert isinstance(bn, nn.BatchNorm2d)
        n = bn.num_features
        bn.running_mean.copy_(torch.linspace(-1.0, 2.0, n))  # type: ignore[union-attr]
        bn.running_var.copy_(torch.linspace(0.5, 3.0, n))  # type: ignore[union-attr]
        bn.weight.data.copy_(torch.linspace(-2.0, 1.5, n))
        bn.bias.data.copy_(torch.linspace(0.3, -0.7, n))
    return net.eval()


def _count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_folded_graph_computes_the_same_without_batch_norms() -> None:
    traced = fx.symbolic_trace(_net()).eval()
    folded, count = fold_batch_norms(traced)
    assert count == 2
    assert _count(folded, nn.BatchNorm2d) == 0
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(folded(x), traced(x), rtol=1e-5, atol=1e-5)


def test_the_original_keeps_its_modules_and_weights() -> None:
    net = _net()
    traced = fx.symbolic_trace(net).eval()
    weight = net.conv1.weight.detach().clone()  # type: ignore[union-attr]
    x = torch.randn(2, 3, 8, 8)
    before = traced(x)
    folded, _ = fold_batch_norms(traced)
    assert _count(traced, nn.BatchNorm2d) == 2
    assert torch.equal(net.conv1.weight, weight)  # type: ignore[union-attr]
    assert torch.equal(traced(x), before)
    # Modules outside a folded pair are shared, not copied.
    assert folded.get_submodule("relu") is net.relu
    assert folded.get_submodule("conv1") is not net.conv1


class _ConvBatchNorm(nn.Module):
    """A convolution and a batch norm of its outputs, wired together by the subclass."""

    def __init__(self, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, kernel_size)
        self.bn = nn.BatchNorm2d(out_channels)


class _ReadElsewhere(_ConvBatchNorm):
    """Returns the convolution's output as well as the batch norm's: folding would change
    the first."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, self.bn(y)


class _CalledTwice(_ConvBatchNorm):
    """The convolution runs twice, once before the batch norm and once after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize(
    "net",
    [_ReadElsewhere(out_channels=4, kernel_size=3), _CalledTwice(out_channels=3, kernel_size=1)],
    ids=["read-elsewhere", "called-twice"],
)
def test_a_pair_that_folding_would_change_is_not_folded(net: _ConvBatchNorm) -> None:
    traced = fx.symbolic_trace(net.eval()).eval()
    folded, count = fold_batch_norms(traced)
    assert count == 0
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(folded(x), traced(x), rtol=0, atol=0)  # the very same outputs


def test_batch_norms_in_training_mode_are_left() -> None:
    traced = fx.symbolic_trace(_net()).train()
    assert fold_batch_norms(traced)[1] == 0


def test_fp32_optimization_steps_run_the_folded_graph() -> None:
    """The batch norms run in the exact evaluations only (a fixed count), not in the steps."""
    net = _net()
    calls: list[int] = []
    net.bn1.register_forward_hook(lambda *_: calls.append(1))

    def batch_norm_calls(steps: int) -> int:
        calls.clear()
        settings = RenderSettings(steps=steps, precision="fp32", redirect_relu_steps=0)
        visualize(
            net,
            objectives.channel("bn2", [0, 1]),
            input_shape=(3, 16, 16),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            settings=settings,
        )
        return len(calls)

    batch_norm_calls(1)  # the first render also indexes the model's layers (one forward)
    assert batch_norm_calls(2) == batch_norm_calls(6) > 0


def test_step_graphs_are_built_once_and_again_when_the_weights_change() -> None:
    traced = fx.symbolic_trace(_net()).eval()
    first = step_graphs(traced, redirect=True)
    assert step_graphs(traced, redirect=True) is first  # no second copy, no second source
    assert first.redirected is not None  # the net has a ReLU
    x = torch.randn(2, 3, 8, 8)
    conv1 = traced.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    with torch.no_grad():
        conv1.weight.mul_(-1.5)  # in place: the same tensor, a new version
    again = step_graphs(traced, redirect=True)
    assert again is not first
    torch.testing.assert_close(again.folded(x), traced(x), rtol=1e-5, atol=1e-5)
    # A graph asked for without redirection first gets it built when it is asked for.
    other = fx.symbolic_trace(_net()).eval()
    assert step_graphs(other, redirect=False).redirected is None
    assert step_graphs(other, redirect=True).redirected is not None
