"""Layer addressing and activation capture.

A layer is addressed by the dotted name that torchvision's FX feature extraction gives a node
of the model's graph (``layer1.0.conv1``, ``layer1.0.relu_1`` for a reused module,
``layer1.0.add`` for a functional op), or by the name of a container module (``layer2``), which
stands for its last node. Models that FX cannot trace fall back to forward hooks on
``named_modules()``.

Every forward pass stops at the deepest requested layer: the FX extractor is truncated there,
and the hook fallback aborts the forward once every requested output is captured.
"""

from __future__ import annotations

import contextlib
import difflib
import operator
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from cnnviz.errors import LayerShapeError, UnknownLayerError

__all__ = [
    "LayerIndex",
    "LayerInfo",
    "capture_activations",
    "layer_index",
    "preserved_state",
]

Extractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its dotted name, what computes it, and its output shape.

    ``shape`` is the output shape of one sample without the batch dimension: ``(C, H, W)``
    for a convolutional layer, ``(K,)`` for a linear one.
    """

    name: str
    kind: str
    shape: tuple[int, ...]


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore every module's mode afterwards.

    ``requires_grad`` of every parameter is restored too, so a block may freeze the weights.
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


class _CapturedAll(Exception):
    """Raised inside a forward hook to stop the forward once every output is captured."""


def _function_kind(target: object) -> str:
    if target is operator.add or target is torch.add:
        return "add"
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) else str(target)


class LayerIndex:
    """The addressable layers of one model, and cached truncated extractors for them.

    Build one per model (see :func:`layer_index`); it holds no reference that keeps the model
    alive longer than its owner does. ``input_shape`` is ``(C, H, W)`` of the model's input,
    needed only to report output shapes.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, int, int] | None = None, name: str = "model"
    ) -> None:
        self._model = weakref.ref(model)
        self.name = name
        self.input_shape = input_shape
        self._lock = threading.Lock()
        self._extractors: dict[tuple[str, ...], Extractor] = {}
        self._layers: list[LayerInfo] | None = None
        try:
            with preserved_state(model):  # tracing switches modes: keep them
                _, eval_nodes = get_graph_node_names(model, suppress_diff_warning=True)
            self.traceable = True
            nodes = [node for node in eval_nodes if node != "x"]
        except Exception:  # any tracing failure means: use hooks instead
            self.traceable = False
            nodes = [name for name, _ in model.named_modules() if name]
        self._node_names = nodes
        self._containers = self._container_names(model, nodes) if self.traceable else []
        # A container stands for the last of its nodes, as in create_feature_extractor.
        self._node_of = {node: node for node in nodes}
        for container in self._containers:
            self._node_of[container] = [n for n in nodes if n.startswith(container + ".")][-1]
        self._known = set(self._node_of)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this LayerIndex no longer exists")
        return model

    @staticmethod
    def _container_names(model: nn.Module, nodes: Sequence[str]) -> list[str]:
        """Modules that are not graph nodes themselves but own some (``layer2``, ``layer2.0``)."""
        node_set = set(nodes)
        names = []
        for name, _ in model.named_modules():
            if name and name not in node_set and any(n.startswith(name + ".") for n in nodes):
                names.append(name)
        return names

    def _ordered_names(self) -> list[str]:
        """Every addressable name, in forward order (containers before their nodes)."""
        containers = set(self._containers)
        ordered: list[str] = []
        placed: set[str] = set()
        for node in self._node_names:
            parts = node.split(".")
            for depth in range(1, len(parts)):
                prefix = ".".join(parts[:depth])
                if prefix in containers and prefix not in placed:
                    ordered.append(prefix)
                    placed.add(prefix)
            ordered.append(node)
        return ordered

    def resolve(self, names: Sequence[str]) -> list[str]:
        """Check that every name is addressable; returns them without duplicates, in order."""
        unique = list(dict.fromkeys(names))
        for name in unique:
            if name not in self._known:
                close = difflib.get_close_matches(name, self._ordered_names(), n=3, cutoff=0.5)
                raise UnknownLayerError(name, self.name, close)
        return unique

    def layers(self) -> list[LayerInfo]:
        """Every addressable layer with its kind and output shape, computed once.

        Runs one forward pass of zeros of ``input_shape`` through the whole model.
        """
        if self._layers is not None:
            return self._layers
        if self.input_shape is None:
            raise ValueError("input_shape is needed to compute the layers' output shapes")
        model = self.model
        names = self._ordered_names()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        x = torch.zeros((1, *self.input_shape), device=device, dtype=dtype)
        kinds = self._kinds(model, tuple(self._node_names))
        with torch.inference_mode():
            outputs = self.capture(x, names)
        infos = [
            LayerInfo(name, kinds.get(name, "module"), tuple(out.shape[1:]))
            for name, out in outputs.items()
            if isinstance(out, torch.Tensor) and out.dim() >= 2
        ]
        self._layers = infos
        return infos

    def _kinds(self, model: nn.Module, names: tuple[str, ...]) -> dict[str, str]:
        """What computes each layer: a module class name, or a function name for an op."""
        modules = dict(model.named_modules())
        kinds: dict[str, str] = {}
        if self.traceable:
            graph = self._extractor(names)
            output = next(n for n in graph.graph.nodes if n.op == "output")  # type: ignore[attr-defined]
            for name, node in output.args[0].items():
                if node.op == "call_module":
                    kinds[name] = type(modules[node.target]).__name__
                elif node.op == "call_function":
                    kinds[name] = _function_kind(node.target)
                else:
                    kinds[name] = str(node.target)
        for name in [*names, *self._containers]:
            if name in modules and (name in self._containers or not self.traceable):
                kinds[name] = type(modules[name]).__name__
        return kinds

    def info(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of one addressable layer.

        UnknownLayerError for a name the model lacks; LayerShapeError for a layer whose output
        is not a tensor with a batch dimension.
        """
        self.resolve([name])
        found = next((info for info in self.layers() if info.name == name), None)
        if found is None:
            raise LayerShapeError(
                f"layer {name!r} of model {self.name!r} does not output a single tensor with a "
                f"batch dimension; choose another (see GET /v1/models/{self.name}/layers)"
            )
        return found

    def node(self, name: str) -> str:
        """The graph node that ``name`` stands for: itself, or a container's last node.

        The key under which :meth:`extractor` returns the layer's activations.
        """
        self.resolve([name])
        return self._node_of[name]

    def extractor(self, names: Sequence[str]) -> Extractor:
        """A callable ``x -> {node: activation}`` that stops at the deepest of ``names``.

        Its keys are graph nodes: a container name is replaced by its last node. Built once
        per set of nodes, whatever their order or spelling, and cached. It shares the model's
        parameters; call it inside :func:`preserved_state` to run in eval mode without
        changing the model.
        """
        wanted = {self._node_of[name] for name in self.resolve(names)}
        # In graph order: ["b", "a"], ["a", "b"] and a container's name share one extractor.
        return self._extractor(tuple(node for node in self._node_names if node in wanted))

    def _extractor(self, key: tuple[str, ...]) -> Extractor:
        with self._lock:
            cached = self._extractors.get(key)
            if cached is None:
                if self.traceable:
                    # Tracing switches the model between train and eval modes: keep them.
                    with preserved_state(self.model):
                        cached = create_feature_extractor(
                            self.model, return_nodes=list(key), suppress_diff_warning=True
                        )
                else:
                    cached = _HookExtractor(self._model, key)
                self._extractors[key] = cached
            return cached

    def capture(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Activations of ``names`` for a batch ``x`` of shape ``(N, C, H, W)``.

        Returns ``{name: (N, *shape)}`` in the order asked for. Runs in eval mode and leaves the
        model's modes as they were; gradients flow when ``x`` requires them.
        """
        names = self.resolve(names)
        extractor = self.extractor(names)
        with preserved_state(self.model):
            if isinstance(extractor, nn.Module):
                extractor.eval()
            outputs = extractor(x)
        return {name: outputs[self._node_of[name]] for name in names}


class _HookExtractor:
    """Activation capture with forward hooks, for models FX cannot trace.

    Hooks are added for one call and removed in ``finally``; the forward is aborted once every
    requested module has produced its output, so nothing past the deepest layer runs.
    """

    def __init__(self, model_ref: weakref.ref[nn.Module], names: tuple[str, ...]) -> None:
        self._model_ref = model_ref
        self._names = names

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the model of this extractor no longer exists")
        modules = dict(model.named_modules())
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def hook_for(name: str) -> Callable[[nn.Module, object, object], None]:
            def hook(_module: nn.Module, _inputs: object, output: object) -> None:
                if name not in captured and isinstance(output, torch.Tensor):
                    captured[name] = output
                    if len(captured) == len(self._names):
                        raise _CapturedAll

            return hook

        try:
            for name in self._names:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
            with contextlib.suppress(_CapturedAll):
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        return captured


_indexes: weakref.WeakKeyDictionary[nn.Module, LayerIndex] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


def layer_index(
    model: nn.Module, input_shape: tuple[int, int, int] | None = None, name: str = "model"
) -> LayerIndex:
    """The :class:`LayerIndex` of ``model``, built on first use and kept as long as the model."""
    with _indexes_lock:
        index = _indexes.get(model)
        if index is None:
            index = LayerIndex(model, input_shape, name)
            _indexes[model] = index
        elif index.input_shape is None and input_shape is not None:
            index.input_shape = input_shape
        return index


def capture_activations(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str]
) -> Mapping[str, torch.Tensor]:
    """Activations of ``layers`` for images ``x`` ``(N, C, H, W)``, stopping at the deepest one.

    The notebook entry point: ``capture_activations(model, batch, ["layer2"])["layer2"]``.
    Leaves no hook behind and the model's modes as they were.
    """
    return layer_index(model).capture(x, layers)
