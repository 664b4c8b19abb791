"""Finding each layer's batch axis and axes (see :mod:`cnnviz.axes` for what they mean).

**The batch axis.** The model runs on batches of 2 and of 3 images; a layer is addressable
only when its output is a tensor whose first axis is the batch in both runs and the rest of
its shape does not change. A parameter reshaped in the forward (ConvNeXt's
``gamma.reshape(1, -1, 1, 1)``) or a stack whose first axis is not the batch (ViT's
``qkv.permute(2, 0, 3, 1, 4)``, ``(3, B, heads, N, d)``) is left out. In a traced graph, a node
that does not depend on the input's values (only, say, on its batch size) is left out too.

**The axes, from the traced graph.** The input is ``CHW``. Facts flow along the graph:

- a convolution gives ``CHW``;
- ``permute(0, 2, 3, 1)`` of ``CHW`` gives ``HWC``, ``permute(0, 3, 1, 2)`` of ``HWC`` gives
  ``CHW``; any other permutation of a 4-d tensor gives unknown axes;
- ``flatten(2)`` or ``reshape(B, C, H·W)`` of ``CHW`` gives the transposed tokens ``(D, N)``
  on the ``(H, W)`` grid, and ``transpose(1, 2)`` of those gives ``tokens``; ``HWC`` reshaped
  to ``(B, H·W, C)`` gives ``tokens`` too; tokens reshaped back to a grid give ``HWC``/``CHW``;
- ``cat`` of tokens after other ``(B, n, D)`` tensors (a class token) adds ``n`` prefix
  tokens; ``x[:, p:]`` drops them;
- any other op whose data inputs all have the same known axes keeps them when it keeps the
  layout's shape (elementwise ops, norms, ``Linear`` over the last axis of ``HWC`` or tokens,
  pooling of ``CHW``, ...); ``Linear`` over the last axis of ``CHW`` is unknown;
- a 2-d ``(B, K)`` output is a ``vector``.

A ``(B, N, D)`` output the flow leaves unknown (after an attention's own reshapes) is
``tokens`` when ``N`` is the token count of a layer already known as tokens and ``D`` is not;
where the graph knows no tokens, when ``N`` alone fits one grid of the input (see
:func:`cnnviz.axes.token_grids`).

**Models FX cannot trace** (forward hooks): a convolution, pooling or batch norm module gives
``CHW``; a ``Linear`` or ``LayerNorm`` module with 4-d output gives ``HWC``; a module whose
output or input is a tensor already seen keeps its axes when the shape is kept; other 4-d
outputs are ``CHW`` only when no module of the model is channels-last; ``(B, N, D)`` by the
token-count rule.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from cnnviz.axes import LayerAxes, token_grids

__all__ = ["Probe", "graph_axes"]

Shape = tuple[int, ...]

_LAYOUT_OPS = {
    "permute",
    "transpose",
    "swapaxes",
    "swapdims",
    "movedim",
    "moveaxis",
    "t",
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "matmul",
    "bmm",
    "einsum",
    "expand",
    "expand_as",
    "view_as",
    "reshape_as",
    "repeat",
    "cat",
    "concat",
    "concatenate",
    "stack",
    "getitem",
    "linear",
}
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension"}
CHANNEL_FIRST_MODULES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class Fact:
    """What flows: ``kind`` CHW, HWC, tokens, tokens_t (transposed ``(D, N)``) or vector."""

    kind: str
    prefix: int = 0
    grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class Probe:
    """A listed layer's per-image shape and axes."""

    shape: Shape
    axes: LayerAxes


def _op(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return str(target)
    if target is operator.getitem:
        return "getitem"
    if target is operator.matmul:
        return "matmul"
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) else str(target)


def _permutation(node: fx.Node, module: nn.Module | None, rank: int) -> tuple[int, ...] | None:
    """The permutation a permute-like node applies, found by running it on a tensor whose
    sizes are all different; None when its arguments are not constants."""
    if module is not None:
        dims = getattr(module, "dims", None)
        return tuple(int(d) % rank for d in dims) if dims is not None else None
    sizes = tuple(range(2, rank + 2))
    dummy = torch.empty(sizes, device="meta")
    args = node.args[1:]
    nodes: list[fx.Node] = []
    fx.node.map_arg((args, node.kwargs), nodes.append)
    if nodes:
        return None
    try:
        if node.op == "call_method":
            out = getattr(dummy, str(node.target))(*args, **node.kwargs)
        else:
            out = node.target(dummy, *args, **node.kwargs)  # type: ignore[operator]
    except Exception:  # arguments this probe cannot replay: unknown
        return None
    return tuple(sizes.index(s) for s in out.shape)


def _reshaped(fact: Fact, before: Shape, after: Shape) -> Fact | None:
    """The fact after a reshape of one image from ``before`` to ``after``."""
    if len(after) == 1:
        return Fact("vector")
    if after == before:
        return fact
    if fact.kind == "vector" and after in ((before[0], 1, 1), (1, 1, before[0])):
        return Fact("CHW") if after[0] == before[0] else Fact("HWC")
    if fact.kind == "CHW" and len(before) == 3:
        c, h, w = before
        if after == (c, h * w):
            return Fact("tokens_t", 0, (h, w))
    if fact.kind == "HWC" and len(before) == 3:
        h, w, c = before
        if after == (h * w, c):
            return Fact("tokens", 0, (h, w))
    if fact.kind in ("tokens", "tokens_t") and fact.prefix == 0 and fact.grid is not None:
        h, w = fact.grid
        if fact.kind == "tokens" and after == (h, w, before[1]):
            return Fact("HWC")
        if fact.kind == "tokens_t" and after == (before[0], h, w):
            return Fact("CHW")
    return None


def _kept(fact: Fact, before: Shape, after: Shape) -> Fact | None:
    """The fact of an op that keeps the layout, when ``after`` still fits it."""
    if len(after) == 1:
        return Fact("vector")
    if len(after) != len(before):
        return None
    if fact.kind in ("CHW", "HWC") and len(after) == 3:
        return fact
    if fact.kind == "tokens" and after[0] == before[0]:
        return fact
    if fact.kind == "tokens_t" and after[1] == before[1]:
        return fact
    return None


def to_axes(fact: Fact | None, shape: Shape, why: str) -> LayerAxes:
    if fact is None:
        return LayerAxes(None, why=why or "the graph does not show which axis holds the units")
    if fact.kind == "vector" and len(shape) == 1:
        return LayerAxes("vector", shape[0], (1, 1), why="from the traced graph")
    if fact.kind == "CHW" and len(shape) == 3:
        return LayerAxes("CHW", shape[0], (shape[1], shape[2]), why="from the traced graph")
    if fact.kind == "HWC" and len(shape) == 3:
        return LayerAxes("HWC", shape[2], (shape[0], shape[1]), why="from the traced graph")
    if fact.kind == "tokens" and len(shape) == 2 and fact.grid is not None:
        h, w = fact.grid
        if shape[0] == fact.prefix + h * w:
            return LayerAxes("tokens", shape[1], fact.grid, fact.prefix, "from the traced graph")
    if fact.kind == "tokens_t":
        return LayerAxes(None, why="a transposed token layout (D, N): features before tokens")
    return LayerAxes(None, why=f"a {fact.kind} tensor reshaped to {shape}")


def by_token_count(
    shape: Shape, known: dict[int, set[tuple[int, tuple[int, int]]]], input_size: tuple[int, int]
) -> LayerAxes:
    """A ``(N, D)`` output whose axes the flow does not give: tokens when N alone fits."""
    count, features = shape
    if known:
        first = known.get(count, set())
        second = known.get(features, set())
        source = "the token count of the model's token layers"
    else:
        first = set(token_grids(count, input_size))
        second = set(token_grids(features, input_size))
        source = "the only grid of the input its token count fits"
    if len(first) == 1 and not second:
        ((prefix, grid),) = first
        return LayerAxes("tokens", features, grid, prefix, why=source)
    if second and not first:
        return LayerAxes(None, why=f"{shape} looks like a transposed token layout (D, N)")
    return LayerAxes(None, why=f"{shape} is not known as (N tokens, D features)")


class _Shapes(fx.Interpreter):
    """Runs the graph once, keeping each node's output shape (None for non-tensors)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[str, Shape | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n.name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def batch_of(root: nn.Module, input_shape: tuple[int, int, int], n: int) -> torch.Tensor:
    param = next(root.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    generator = torch.Generator().manual_seed(n)
    return torch.randn((n, *input_shape), generator=generator).to(device=device, dtype=dtype)


def batched(a: Shape | None, b: Shape | None) -> bool:
    return (
        a is not None
        and b is not None
        and len(a) >= 2
        and a[0] == 2
        and b[0] == 3
        and a[1:] == b[1:]
    )


def graph_axes(
    root: nn.Module, graph: fx.Graph, input_shape: tuple[int, int, int]
) -> dict[str, Probe]:
    """``{node name: Probe}`` of the listed nodes of a traced ``graph`` of ``root``.

    Runs the graph on batches of 2 and 3 (the caller sets eval mode and no-grad).
    """
    module = fx.GraphModule(root, copy.deepcopy(graph))
    runs = []
    for n in (2, 3):
        shapes = _Shapes(module)
        shapes.run(batch_of(root, input_shape, n))
        runs.append(shapes.shapes)
    two, three = runs
    modules = dict(root.named_modules())
    facts: dict[str, Fact | None] = {}
    why: dict[str, str] = {}
    data: dict[str, bool] = {}
    for node in module.graph.nodes:
        name = node.name
        if node.op == "placeholder":
            data[name] = True
            facts[name] = Fact("CHW") if len(two.get(name) or ()) == 4 else None
            continue
        op = _op(node)
        shape_query = op in _SHAPE_QUERIES or (
            op == "getattr" and len(node.args) > 1 and node.args[1] in ("shape", "ndim")
        )
        inputs = [a.name for a in node.all_input_nodes]
        data[name] = not shape_query and any(data.get(a, False) for a in inputs)
        if not data[name] or node.op in ("output", "get_attr"):
            facts[name] = None
            continue
        sub = modules.get(str(node.target)) if node.op == "call_module" else None
        facts[name], why[name] = _infer(node, op, sub, inputs, two, facts, data)
    known: dict[int, set[tuple[int, tuple[int, int]]]] = {}
    for name, fact in facts.items():
        shape = two.get(name)
        if fact is not None and fact.kind == "tokens" and fact.grid and shape and len(shape) == 3:
            known.setdefault(shape[1], set()).add((fact.prefix, fact.grid))
    probes: dict[str, Probe] = {}
    input_size = (input_shape[1], input_shape[2])
    for node in module.graph.nodes:
        name = node.name
        if node.op in ("placeholder", "output", "get_attr") or not data.get(name):
            continue
        if not batched(two.get(name), three.get(name)):
            continue
        shape = two[name][1:]  # type: ignore[index]
        axes = to_axes(facts.get(name), shape, why.get(name, ""))
        if axes.axes is None and len(shape) == 2 and facts.get(name) is None:
            axes = by_token_count(shape, known, input_size)
        probes[name] = Probe(shape, axes)
    return probes


def _data_inputs(
    node: fx.Node, two: dict[str, Shape | None], data: dict[str, bool]
) -> list[fx.Node]:
    """The data inputs of ``node``, a tuple (a split, an attention's outputs) replaced by the
    inputs of the node that made it."""
    found: list[fx.Node] = []
    for arg in node.all_input_nodes:
        if not data.get(arg.name):
            continue
        if two.get(arg.name) is None and arg.op != "placeholder":
            found.extend(a for a in arg.all_input_nodes if data.get(a.name))
        else:
            found.append(arg)
    return found


def _infer(
    node: fx.Node,
    op: str,
    sub: nn.Module | None,
    inputs: list[str],
    two: dict[str, Shape | None],
    facts: dict[str, Fact | None],
    data: dict[str, bool],
) -> tuple[Fact | None, str]:
    """The fact of one data node, and why it is unknown when it is."""
    out = two.get(node.name)
    if out is None:
        return None, ""
    after = out[1:]
    if len(after) == 1:
        return Fact("vector"), ""
    args = _data_inputs(node, two, data)
    if sub is not None and isinstance(sub, nn.modules.conv._ConvNd) and len(after) == 3:
        return Fact("CHW"), ""
    if not args:
        return None, "its value does not come from a layer with known axes"
    first = args[0]
    fact = facts.get(first.name)
    before_full = two.get(first.name)
    if fact is None or before_full is None:
        return None, "it is computed from a layer whose axes are unknown"
    before = before_full[1:]
    permute = op in _PERMUTES or (sub is not None and type(sub).__name__ == "Permute")
    if permute and len(args) == 1:
        perm = _permutation(node, sub, len(before_full))
        if perm is None:
            return None, "a permutation whose dims are not constants"
        if perm == tuple(range(len(perm))):
            return fact, ""
        if fact.kind == "CHW" and perm == (0, 2, 3, 1):
            return Fact("HWC"), ""
        if fact.kind == "HWC" and perm == (0, 3, 1, 2):
            return Fact("CHW"), ""
        if fact.kind == "tokens" and perm == (0, 2, 1):
            return Fact("tokens_t", fact.prefix, fact.grid), ""
        if fact.kind == "tokens_t" and perm == (0, 2, 1):
            return Fact("tokens", fact.prefix, fact.grid), ""
        return None, f"the permutation {perm} of a {fact.kind} tensor"
    if op in _RESHAPES and len(args) == 1:
        return _reshaped(fact, before, after), f"a {fact.kind} tensor reshaped to {after}"
    if op in ("cat", "concat", "concatenate"):
        return _concatenated(node, args, two, facts, after)
    if op == "getitem" and fact.kind == "tokens" and fact.grid is not None:
        h, w = fact.grid
        index = node.args[1]
        if (
            len(after) == 2
            and after[0] == h * w
            and isinstance(index, tuple)
            and len(index) >= 2
            and index[1] == slice(fact.prefix, None, None)
        ):
            return Fact("tokens", 0, fact.grid), ""
    if op in _LAYOUT_OPS - {"getitem", "linear"}:
        return None, f"a {op} of a {fact.kind} tensor"
    last_axis = op == "linear" or isinstance(sub, nn.Linear)
    if last_axis and fact.kind == "CHW":
        return None, "a linear map over the last axis (width) of a CHW tensor"
    # An elementwise op takes its axes from the inputs of its own shape; the others only
    # broadcast (a scale (C, 1, 1), a bias).
    same = [a for a in args if two.get(a.name) == out]
    pool = same or args
    kinds = {facts.get(a.name) for a in pool}
    if None in kinds:
        return None, "it is computed from layers whose axes are unknown"
    if len(kinds) != 1:
        return None, "it mixes layers of different axes"
    (fact,) = kinds
    assert fact is not None
    before = (two.get(pool[0].name) or out)[1:]
    return _kept(fact, before, after), f"a {fact.kind} tensor turned into {after}"


def _concatenated(
    node: fx.Node,
    args: list[fx.Node],
    two: dict[str, Shape | None],
    facts: dict[str, Fact | None],
    after: Shape,
) -> tuple[Fact | None, str]:
    """``cat``: along the units keeps the axes; tokens after others (a class token) add
    prefix tokens."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(dim, int):
        return None, "a cat along a dimension that is not a constant"
    rank = len(after) + 1
    dim %= rank
    parts = node.args[0] if node.args and isinstance(node.args[0], list | tuple) else []
    every = [p for p in parts if isinstance(p, fx.Node)]  # with the constants (class tokens)
    kinds = [facts.get(a.name) for a in every]
    tokens = [i for i, k in enumerate(kinds) if k is not None and k.kind == "tokens"]
    if len(tokens) == 1 and dim == 1 and len(after) == 2:
        i = tokens[0]
        fact = kinds[i]
        assert fact is not None
        if i != len(every) - 1:
            return None, "tokens concatenated before other tokens (suffix tokens)"
        extra = sum((two.get(a.name) or (0, 0))[1] for a in every[:i])
        return Fact("tokens", fact.prefix + extra, fact.grid), ""
    kinds = [facts.get(a.name) for a in args]
    if None in kinds or len({k.kind for k in kinds if k is not None}) != 1:
        return None, "a cat of layers of different or unknown axes"
    fact = kinds[0]
    assert fact is not None
    units_axis = {"CHW": 1, "HWC": 3, "tokens": 2, "tokens_t": 1, "vector": 1}[fact.kind]
    if dim == units_axis:
        return fact, ""
    return None, f"a cat of {fact.kind} tensors along axis {dim}"
