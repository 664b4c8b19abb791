"""Layer addressing and activation capture.

A layer is addressed by a stable dotted name (see :mod:`cnnviz.tracing`): a module's output by
the module's own qualified name, exactly (``conv1_2``, ``layer1.0.conv1``, the container
``layer2``); a module's later calls by ``name:1``, ``name:2``, …; a functional op by its
enclosing module and the op (``layer1.0.add``). Models that FX cannot trace fall back to
forward hooks on ``named_modules()``, with the same names for module outputs.

Every forward pass stops at the deepest requested layer: the FX extractor is truncated there,
and the hook fallback aborts the forward once every requested output is captured.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.axes import AxesDecl, check_axes, declared_axes
from cnnviz.axes_hooks import hook_axes
from cnnviz.axes_inference import Probe, graph_axes
from cnnviz.errors import LayerShapeError, UnknownLayerError
from cnnviz.tracing import TracedModel, trace, truncated

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
    """One addressable layer: its dotted name, what computes it, its output shape and axes.

    ``shape`` is the output shape of one sample without the batch dimension, as computed:
    ``(C, H, W)`` for a convolutional layer, ``(H, W, C)`` channels-last, ``(N, D)`` tokens,
    ``(K,)`` for a linear one. ``axes`` says which (see :mod:`cnnviz.axes`): ``"CHW"``,
    ``"HWC"``, ``"tokens"``, ``"vector"``, or ``None`` when ambiguous (``why`` says why);
    ``units`` is the number of channels or features, ``token_grid`` ``(h, w)`` and
    ``prefix_tokens`` the layout of tokens (``N = prefix_tokens + h·w``).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    axes: str | None = None
    units: int | None = None
    token_grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    why: str = ""
    features_first: bool = False

    @property
    def grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of one unit's map: the spatial grid (``(1, 1)`` for a vector)."""
        if self.axes == "CHW":
            return (self.shape[1], self.shape[2])
        if self.axes == "HWC":
            return (self.shape[0], self.shape[1])
        if self.axes == "tokens":
            return self.token_grid
        return (1, 1) if self.axes == "vector" else None

    @property
    def map_shape(self) -> tuple[int, int, int] | None:
        """``(units, h, w)``: the unit-first shape of :func:`cnnviz.axes.unit_maps`."""
        grid = self.grid
        return None if grid is None or self.units is None else (self.units, *grid)


def _info(name: str, kind: str, probe: Probe) -> LayerInfo:
    axes = probe.axes
    return LayerInfo(
        name,
        kind,
        probe.shape,
        axes.axes,
        axes.units,
        axes.grid if axes.axes == "tokens" else None,
        axes.prefix_tokens,
        axes.why,
        axes.features_first,
    )


@contextlib.contextmanager
def preserved_state(model: nn.Module, frozen: bool = False) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore every module's mode afterwards.

    ``requires_grad`` of every parameter is restored too; ``frozen`` turns it off for the
    block (gradients then flow to the input only, as optimizing an image needs).
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        if frozen:
            for param, _ in grads:
                param.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


class _CapturedAll(Exception):
    """Raised inside a forward hook to stop the forward once every output is captured."""


@dataclass(frozen=True)
class _Named:
    """How a name is computed: its extractor key, kind, and module call (if a module's)."""

    key: str
    kind: str
    module: str | None
    call: int | None


class LayerIndex:
    """The addressable layers of one model, and cached truncated extractors for them.

    Build one per model (see :func:`layer_index`); it holds no reference that keeps the model
    alive longer than its owner does. ``input_shape`` is ``(C, H, W)`` of the model's input,
    needed to report output shapes (and, for models FX cannot trace, to find the modules
    called more than once).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int] | None = None,
        name: str = "model",
        axes: Mapping[str, AxesDecl] | None = None,
    ) -> None:
        self._model = weakref.ref(model)
        self.name = name
        self.input_shape = input_shape
        self.declared = dict(axes or {})
        self._lock = threading.Lock()
        self._extractors: dict[tuple[str, ...], Extractor] = {}
        self._layers: list[LayerInfo] | None = None
        self._traced: TracedModel | None
        # What decides the mode a forward runs in (the root is read through the weak ref).
        self._submodules = tuple(module for module in model.modules() if module is not model)
        try:
            with preserved_state(model):  # tracing switches to eval mode: keep the modes
                self._traced = trace(model)
            self.traceable = True
            self._named, self._order = self._names_from_graph(self._traced)
        except Exception:  # any tracing failure means: use hooks instead
            self._traced = None
            self.traceable = False
            self._named, self._order = self._names_from_hooks(model, input_shape)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this LayerIndex no longer exists")
        return model

    @staticmethod
    def _names_from_graph(traced: TracedModel) -> tuple[dict[str, _Named], list[str]]:
        """Every name of the traced graph; the order lists a container before its contents."""
        named = {
            layer.name: _Named(traced.key[layer.node], layer.kind, layer.module, layer.call)
            for layer in traced.layers
        }
        containers = {
            layer.module for layer in traced.layers if layer.container and layer.call == 0
        }
        order: list[str] = []
        placed: set[str] = set()
        for layer in traced.layers:
            if layer.name in placed:
                continue
            parts = layer.owner.split(".") if layer.owner else []
            depth = len(parts) - 1 if layer.module is not None else len(parts)
            for i in range(1, depth + 1):
                prefix = ".".join(parts[:i])
                if prefix in containers and prefix not in placed:
                    order.append(prefix)
                    placed.add(prefix)
            if layer.name not in placed:
                order.append(layer.name)
                placed.add(layer.name)
        return named, order

    @staticmethod
    def _names_from_hooks(
        model: nn.Module, input_shape: tuple[int, int, int] | None
    ) -> tuple[dict[str, _Named], list[str]]:
        """Module names, for a model FX cannot trace.

        With an input shape, one forward of zeros finds which modules run, in which order, and
        how often: a module's later calls are ``name:1``, ``name:2``, … as in a traced model.
        """
        modules = dict(model.named_modules())
        kinds = {name: type(module).__name__ for name, module in modules.items()}
        calls: list[tuple[str, int]]
        if input_shape is None:
            calls = [(name, 0) for name in modules if name]
        else:
            calls = _module_calls(model, input_shape)
        named: dict[str, _Named] = {}
        for module, call in calls:
            name = module if call == 0 else f"{module}:{call}"
            while call and (name in modules or name in named):
                name += "'"
            named[name] = _Named(name, kinds[module], module, call)
        return named, list(named)

    def resolve(self, names: Sequence[str]) -> list[str]:
        """Check that every name is addressable; returns them without duplicates, in order."""
        unique = list(dict.fromkeys(names))
        for name in unique:
            if name not in self._named:
                close = difflib.get_close_matches(name, self._order, n=3, cutoff=0.5)
                raise UnknownLayerError(name, self.name, close)
        return unique

    def layers(self) -> list[LayerInfo]:
        """Every addressable layer with its kind, output shape and axes, computed once.

        Runs the whole model on random batches of 2 and 3 images of ``input_shape`` (see
        :mod:`cnnviz.axes_inference`). Names whose value is not a tensor whose first axis is
        the batch (a tuple, a shape, a parameter reshaped, a stack of q, k and v), or that do
        not depend on the input, are left out. Axes declared at construction win.
        """
        if self._layers is not None:
            return self._layers
        if self.input_shape is None:
            raise ValueError("input_shape is needed to compute the layers' output shapes")
        model = self.model
        size = (self.input_shape[1], self.input_shape[2])
        infos: list[LayerInfo] = []
        with preserved_state(model), torch.inference_mode():
            if self._traced is not None:
                by_node = graph_axes(model, self._traced.graph, self.input_shape)
                nodes = {layer.name: layer.node.name for layer in self._traced.layers}
                probes = {name: by_node.get(nodes.get(name, "")) for name in self._order}
            else:
                by_call = hook_axes(model, self.input_shape)
                probes = {
                    name: by_call.get((named.module or name, named.call or 0))
                    for name, named in self._named.items()
                }
        for name in self._order:
            probe = probes.get(name)
            if probe is None:
                continue
            declared = declared_axes(self.declared, name, probe.shape, size)
            if declared is not None:
                probe = Probe(probe.shape, declared)
            infos.append(_info(name, self._named[name].kind, probe))
        self._layers = infos
        return infos

    def module_of(self, name: str) -> tuple[str, int] | None:
        """``(module, call)`` when ``name`` is a module's output (call 0 is its first); else
        ``None`` (a functional op)."""
        self.resolve([name])
        named = self._named[name]
        if named.module is None or named.call is None:
            return None
        return named.module, named.call

    def info(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of one addressable layer.

        UnknownLayerError for a name the model lacks; LayerShapeError for a layer whose output
        is not a tensor with a batch dimension.
        """
        self.resolve([name])
        found = next((info for info in self.layers() if info.name == name), None)
        if found is None:
            raise LayerShapeError(
                f"layer {name!r} of model {self.name!r} does not output a single tensor whose "
                "first axis is the batch, computed from the input (a parameter, a shape, a "
                "stack of attention heads); choose another",
                listing=("layers", self.name),
            )
        return found

    def usable(self, names: Sequence[str]) -> list[LayerInfo]:
        """The :class:`LayerInfo` of each of ``names``, checked to have known axes.

        UnknownLayerError, LayerShapeError (see :meth:`info`), or
        :class:`cnnviz.axes.AmbiguousAxesError` naming how to declare the axes.
        """
        infos = [self.info(name) for name in self.resolve(names)]
        for info in infos:
            check_axes(info, info.name, self.name)
        return infos

    def node(self, name: str) -> str:
        """The key under which :meth:`extractor` returns the layer ``name``.

        A name can share its value with others (a block's output is its last op's); they
        share one key.
        """
        self.resolve([name])
        return self._named[name].key

    def extractor(self, names: Sequence[str]) -> Extractor:
        """A callable ``x -> {key: activation}`` that stops at the deepest of ``names``.

        Its keys are those of :meth:`node`. Built once per set of keys, whatever the order or
        spelling of the names, and cached. It shares the model's parameters; call it inside
        :func:`preserved_state` to run in eval mode without changing the model.
        """
        wanted = {self._named[name].key for name in self.resolve(names)}
        # In forward order: ["b", "a"], ["a", "b"] and a container's name share one extractor.
        return self._extractor(tuple(key for key in self._keys_in_order() if key in wanted))

    def _keys_in_order(self) -> list[str]:
        return list(dict.fromkeys(self._named[name].key for name in self._order))

    def _extractor(self, key: tuple[str, ...]) -> Extractor:
        with self._lock:
            cached = self._extractors.get(key)
            if cached is None:
                if self._traced is not None:
                    cached = truncated(self._traced, key)
                else:
                    calls = {k: (self._named[k].module or k, self._named[k].call or 0) for k in key}
                    cached = _HookExtractor(self._model, calls)
                self._extractors[key] = cached
            return cached

    def capture(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Activations of ``names`` for a batch ``x`` of shape ``(N, C, H, W)``.

        Returns ``{name: (N, *shape)}`` in the order asked for. Runs in eval mode and leaves the
        model's modes as they were; gradients flow when ``x`` requires them.
        """
        names = self.resolve(names)
        outputs = self._capture(x, names)
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            out = outputs.get(name)
            if not isinstance(out, torch.Tensor):
                raise LayerShapeError(
                    f"layer {name!r} of model {self.name!r} does not output a single tensor; "
                    "choose another",
                    listing=("layers", self.name),
                )
            tensors[name] = out
        return tensors

    def _capture(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, object]:
        """What each of ``names`` computes for ``x``; names that produced nothing are absent."""
        extractor = self.extractor(names)
        model = self.model
        if model.training or any(module.training for module in self._submodules):
            with preserved_state(model):
                if isinstance(extractor, nn.Module):
                    extractor.eval()
                outputs = extractor(x)
        else:  # already in eval mode (a served model): nothing to switch, nothing to restore
            outputs = extractor(x)
        keys = {name: self._named[name].key for name in names}
        return {name: outputs[key] for name, key in keys.items() if key in outputs}


def _zeros(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """A batch of one zero image on the model's device and dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    return torch.zeros((1, *input_shape), device=device, dtype=dtype)


def _module_calls(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, int]]:
    """``(module, call)`` of every module output that one forward of zeros produces, in order."""
    calls: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, _output: object) -> None:
            calls.append((name, counts.get(name, 0)))
            counts[name] = counts.get(name, 0) + 1

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        with preserved_state(model), torch.inference_mode():
            model(_zeros(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return calls


class _HookExtractor:
    """Activation capture with forward hooks, for models FX cannot trace.

    ``calls`` maps each key to ``(module, call)``: the module's output at that call (0 for the
    first). Hooks are added for one forward and removed in ``finally``; the forward is aborted
    once every requested output is captured, so nothing past the deepest layer runs. Outputs
    are copied as they are captured, since a later in-place op could overwrite them.
    """

    def __init__(
        self, model_ref: weakref.ref[nn.Module], calls: Mapping[str, tuple[str, int]]
    ) -> None:
        self._model_ref = model_ref
        self._calls = dict(calls)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the model of this extractor no longer exists")
        modules = dict(model.named_modules())
        wanted: dict[str, dict[int, str]] = {}
        for key, (module, call) in self._calls.items():
            wanted.setdefault(module, {})[call] = key
        captured: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        handles = []

        def hook_for(module: str) -> Callable[[nn.Module, object, object], None]:
            def hook(_module: nn.Module, _inputs: object, output: object) -> None:
                call = counts.get(module, 0)
                counts[module] = call + 1
                key = wanted[module].get(call)
                if key is None or not isinstance(output, torch.Tensor):
                    return
                if len(captured) + 1 == len(self._calls):
                    captured[key] = output
                    raise _CapturedAll
                captured[key] = output.clone()

            return hook

        try:
            for module in wanted:
                handles.append(modules[module].register_forward_hook(hook_for(module)))
            with contextlib.suppress(_CapturedAll):
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        return captured


_indexes: weakref.WeakKeyDictionary[nn.Module, LayerIndex] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


def layer_index(
    model: nn.Module,
    input_shape: tuple[int, int, int] | None = None,
    name: str = "model",
    axes: Mapping[str, AxesDecl] | None = None,
) -> LayerIndex:
    """The :class:`LayerIndex` of ``model``, built on first use and kept as long as the model.

    ``axes``: declared axes by layer pattern (:func:`cnnviz.axes.parse_axes_table`).
    """
    with _indexes_lock:
        index = _indexes.get(model)
        if index is None:
            index = LayerIndex(model, input_shape, name, axes)
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
