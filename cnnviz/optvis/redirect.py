"""Redirected ReLU gradients (Lucid's ``redirected_relu_grad``), without touching the model.

A unit whose ReLU input is negative for the whole image gets no gradient at all: optimization
from noise never starts for it. Lucid's fix keeps the ordinary ReLU gradient for every batch
element where any of it is non-zero; where all of it is zero, it lets the incoming gradient
through, except where that would push an already negative input further down.

:func:`redirect_relus` rewrites a *copy* of an FX graph: every ReLU and ReLU6 (modules,
functions, methods, in-place or not) becomes the redirected version. The copy shares the
model's submodules and parameters; the model and the cached extractor stay as they were.

LeakyReLU, PReLU, ELU, GELU and SiLU are not redirected, by design: their gradient is not zero
for negative inputs, so they never cut a unit off from the gradient the way a ReLU does, and
the plain gradient already reaches every unit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["redirect_relus", "redirected_relu", "redirected_relu6"]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(n, -1)``: each batch item's values as one row; a view, not a copy, whatever the
    memory format (channels-last included) as long as the batch dimension is outermost."""
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda d: -strides[d])
    if order[0] == 0:
        t = t.permute(order)
    return t.reshape(t.shape[0], -1)


class _RedirectedClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` with Lucid's redirected gradient; ``high`` may be ``inf``.

    Gradients here are of the *loss* (the negated objective), as in Lucid: a positive gradient
    on a negative input would push it lower, so it is blocked even when redirected.

    The backward costs about a plain ReLU's: the ordinary gradient is torch's own kernel, the
    check for items without any gradient one reduction over a view, and the redirected
    gradient is computed for those items alone.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(min=low, max=high if high != float("inf") else None)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        low, high = ctx.bounds
        # The ordinary gradient: where low < x (< high), else 0 (torch's ReLU convention).
        bounded = high != float("inf")
        if bounded:
            plain = torch.ops.aten.hardtanh_backward(grad, x, low, high)
        else:
            plain = torch.ops.aten.threshold_backward(grad, x, low)
        if plain.dim() < 2:  # no batch dimension: nothing to redirect per item
            return plain, None, None
        items = (~_rows(plain).ne(0).any(dim=1)).nonzero().squeeze(1)  # dead: all-zero rows
        # Once every item's unit is alive, the ordinary gradient is the answer: skip the rest.
        if items.numel() == 0:
            return plain, None, None
        g, xs = grad[items], x[items]
        redirected = torch.where(xs < low, g.clamp(max=0), g)
        if bounded:
            redirected = torch.where(xs > high, redirected.clamp(min=0), redirected)
        plain[items] = redirected
        return plain, None, None


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU forward; redirected gradient for batch items whose ReLU gradient is all zero."""
    out: torch.Tensor = _RedirectedClamp.apply(x, 0.0, float("inf"))
    return out


def redirected_relu6(x: torch.Tensor) -> torch.Tensor:
    """ReLU6 forward; redirected gradient as in :func:`redirected_relu`, at both bounds."""
    out: torch.Tensor = _RedirectedClamp.apply(x, 0.0, 6.0)
    return out


_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_RELU6_FUNCTIONS = {F.relu6}


def _replacement(node: fx.Node, modules: dict[str, nn.Module]) -> Any:
    """The redirected function for a ReLU-like node, or ``None`` for any other node."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, nn.ReLU6):
            return redirected_relu6
        if isinstance(module, nn.ReLU):
            return redirected_relu
    elif node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return redirected_relu
        if node.target in _RELU6_FUNCTIONS:
            return redirected_relu6
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return redirected_relu
    return None


def redirect_relus(module: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``module`` whose ReLUs redirect gradients, and how many were replaced.

    ``module`` is an FX graph module in the mode it will be run in (its current graph is
    copied). The copy references the same submodules, so it shares their parameters.
    """
    graph = copy.deepcopy(module.graph)
    modules = dict(module.named_modules())
    count = 0
    for node in list(graph.nodes):
        function = _replacement(node, modules)
        if function is None:
            continue
        source = node.args[0] if node.args else node.kwargs.get("input")
        with graph.inserting_after(node):
            new = graph.call_function(function, (source,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    graph.lint()
    return fx.GraphModule(module, graph), count
