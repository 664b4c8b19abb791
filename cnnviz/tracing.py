"""FX tracing with layer names that are the modules' own names.

A traced model's layers are named so that a name never points at another layer:

- the output of a module is named by the module's qualified name, exactly as
  ``named_modules()`` gives it (``conv1_2`` is the module ``conv1_2``); containers that FX
  traces through (``layer2``, ``layer2.0``) are named too, by the value their ``forward``
  returns;
- a module called more than once names its later outputs ``name:1``, ``name:2``, … (the
  call's index);
- a functional op (``torch.add``, ``x.mean()``, ``torch.flatten``) is named by the module
  whose ``forward`` ran it and the op (``layer1.0.add``, then ``layer1.0.add:1``, …).

Generated names are checked against every module name, so none of them can collide with a
real module: an op whose plain name is a module's name gets ``()`` after it (``head.fc()``).

torchvision's feature extraction strips any ``_<digits>`` ending as if FX had added it, which
renames modules such as ``conv1_1``; this module keeps the naming in one place instead.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import fx, nn

__all__ = ["TracedLayer", "TracedModel", "trace", "truncated"]


def _torchvision_op_modules() -> tuple[type[nn.Module], ...]:
    """torchvision's op modules that stay leaves (``StochasticDepth``, ``RoIAlign``, …).

    Some have branches FX cannot trace through. The containers among them
    (``Conv2dNormActivation``, ``MLP``, ``SqueezeExcitation``) trace fine and are traced
    through, so that their convolutions are layers of their own.
    """
    traced_through = (nn.Sequential, torchvision.ops.SqueezeExcitation)
    return tuple(
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj)
        and issubclass(obj, nn.Module)
        and not issubclass(obj, traced_through)
    )


def _op_name(node: fx.Node) -> str:
    """What an op node computes, without FX's numbering: ``add``, ``flatten``, ``mean``."""
    target = node.target
    if node.op == "call_method":
        return str(target)
    if target is operator.add or target is torch.add:
        return "add"
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) else str(target)


@dataclass(frozen=True)
class TracedLayer:
    """One named output of a traced model.

    ``module`` is the qualified name of the module whose output this is, and ``call`` which of
    its calls (0 for the first); both are ``None`` for a functional op. ``owner`` is the module
    whose ``forward`` produced it (the module itself, or the op's enclosing module; ``""`` for
    the model). ``container`` is true for a module that FX traced through.
    """

    name: str
    node: fx.Node
    kind: str
    module: str | None
    call: int | None
    owner: str
    container: bool


@dataclass
class TracedModel:
    """One model's graph, traced in eval mode, and its named layers in the order produced.

    ``key`` maps a node to its primary name: the key under which :func:`truncated` returns
    its value. A node can have several names (a block's output is also its last op's).
    """

    root: nn.Module
    graph: fx.Graph
    layers: list[TracedLayer] = field(default_factory=list)
    key: dict[fx.Node, str] = field(default_factory=dict)


class _NamingTracer(fx.Tracer):
    """An FX tracer that names every node as described in this module's docstring."""

    def __init__(self, root: nn.Module) -> None:
        # Functions of these modules are recorded as calls, not traced into.
        super().__init__(autowrap_modules=(math, torchvision.ops))  # type: ignore[arg-type]
        self._leaf_types = _torchvision_op_modules()
        self._modules = {name for name, _ in root.named_modules() if name}
        self._scope = ""
        self._calls: dict[str, int] = {}
        self.layers: list[TracedLayer] = []  # in the order the forward produced them
        self._taken: set[str] = set()
        # FX patches nn.Module.__call__ and __getattr__ for the whole process while it
        # traces: a model that another thread runs meanwhile (an in-process job) must run as
        # if nothing were traced.
        self._thread = threading.get_ident()

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaf_types) or super().is_leaf_module(m, module_qualified_name)

    def _free(self, name: str) -> bool:
        return name not in self._taken and name not in self._modules

    def _module_output_name(self, qualname: str) -> tuple[str, int]:
        call = self._calls.get(qualname, 0)
        self._calls[qualname] = call + 1
        if call == 0:
            return qualname, 0
        name = f"{qualname}:{call}"
        while not self._free(name):  # a module really named "conv:1" (a ModuleDict key)
            name += "'"
        return name, call

    def _op_output_name(self, op: str) -> str:
        base = f"{self._scope}.{op}" if self._scope else op
        while base in self._modules:
            base += "()"
        name, count = base, 0
        while not self._free(name) or self._is_module_repeat(name):
            count += 1
            name = f"{base}:{count}"
        return name

    def _is_module_repeat(self, name: str) -> bool:
        head, _, tail = name.rpartition(":")
        return tail.isdigit() and head in self._modules

    def _record(self, layer: TracedLayer) -> None:
        self._taken.add(layer.name)
        self.layers.append(layer)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        qualname = self.path_of_module(m)
        outer = self._scope
        self._scope = qualname
        try:
            if self.is_leaf_module(m, qualname):
                out = self.create_proxy("call_module", qualname, args, kwargs)
            else:
                out = forward(*args, **kwargs)
        finally:
            self._scope = outer
        if isinstance(out, fx.Proxy) and out.node.op != "placeholder":
            name, call = self._module_output_name(qualname)
            container = not self.is_leaf_module(m, qualname)
            kind = type(m).__name__
            self._record(TracedLayer(name, out.node, kind, qualname, call, qualname, container))
        elif qualname:
            self._calls[qualname] = self._calls.get(qualname, 0) + 1
        return out

    def create_proxy(self, kind: str, target: Any, *args: Any, **kwargs: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, *args, **kwargs)
        node = proxy.node
        if node.op in ("call_function", "call_method"):
            op = _op_name(node)
            name = self._op_output_name(op)
            self._record(TracedLayer(name, node, op, None, None, self._scope, False))
        return proxy


def trace(model: nn.Module) -> TracedModel:
    """Trace ``model`` in eval mode and name its layers; raises whatever FX raises.

    The caller keeps the model's modes (see :func:`cnnviz.layers.preserved_state`).
    """
    model.eval()
    tracer = _NamingTracer(model)
    graph = tracer.trace(model)
    traced = TracedModel(root=model, graph=graph, layers=tracer.layers)
    for layer in tracer.layers:
        traced.key.setdefault(layer.node, layer.name)
    return traced


def _mutated_later(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a user of ``node`` may write into its output in place (``ReLU(inplace=True)``)."""
    for user in node.users:
        if user.op == "call_module":
            if getattr(modules.get(str(user.target)), "inplace", False):
                return True
        elif user.op in ("call_function", "call_method"):
            name = _op_name(user)
            in_place = name.endswith("_") and not name.endswith("__")
            if in_place or user.kwargs.get("inplace") is True or user.target is operator.setitem:
                return True
    return False


def truncated(traced: TracedModel, keys: Sequence[str]) -> fx.GraphModule:
    """A graph module ``x -> {key: activation}`` that computes only what ``keys`` need.

    ``keys`` are primary names (values of ``traced.key``). Outputs that a kept op overwrites
    in place are copied first, so each one is the value its layer produced. The module
    shares the model's submodules and parameters.
    """
    nodes = {layer.name: layer.node for layer in traced.layers}
    graph = copy.deepcopy(traced.graph)
    by_name = {node.name: node for node in graph.nodes}
    for node in list(graph.nodes):
        if node.op == "output":
            graph.erase_node(node)
    output = graph.output({key: by_name[nodes[key].name] for key in keys})
    module = fx.GraphModule(traced.root, graph, type(traced.root).__name__)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    # Only the ops that survived the cut can overwrite an output.
    modules = dict(traced.root.named_modules())
    outputs: dict[str, fx.Node] = dict(output.args[0])
    for key, node in outputs.items():
        if _mutated_later(node, modules):
            with module.graph.inserting_after(node):
                outputs[key] = module.graph.call_method("clone", (node,))
    output.args = (outputs,)
    module.graph.lint()
    module.recompile()
    return module
