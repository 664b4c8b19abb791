"""Attribution of one image's prediction: which pixels made the model say what it said.

The notebook entry point::

    from cnnviz.attribution import attribute
    result = attribute(model, x, "gradcam", layer="block4.relu", labels=CLASSES)
    result.predictions      # the top 5: index, label, score, probability
    result.maps             # (T, H, W): one map per target, the top prediction by default

The model is left as it was found: captum's hooks are gone when the call returns, the modes
(train/eval), ``requires_grad`` of every parameter and any ``inplace`` flag are restored, and
no parameter gets a ``.grad``. Calls that share one model must not overlap (captum's hooks
are on the model's modules): the service gives attributions a private copy per model.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.attribution.base import (
    SMOOTH_TYPES,
    AttributionMethod,
    AttributionTask,
    CostInputs,
    Smooth,
    get_method,
    methods,
)
from cnnviz.axes import AxesDecl
from cnnviz.errors import InvalidArgumentError, LayerShapeError
from cnnviz.layers import layer_index, preserved_state
from cnnviz.weights import kernel_layers

__all__ = [
    "MAX_STEPS",
    "MAX_TARGETS",
    "Attribution",
    "Prediction",
    "attribute",
    "default_window",
    "patches",
    "planned_passes",
]

MAX_TARGETS = 16
MAX_STEPS = 1024
MAX_NOISE_SAMPLES = 256
OutputChoice = int | str | None


@dataclass(frozen=True)
class Prediction:
    """One class: its index, label, raw score and softmax probability (None for one score)."""

    index: int
    label: str
    score: float
    probability: float | None


@dataclass(frozen=True)
class Attribution:
    """The attribution maps of one image.

    ``maps`` is ``(T, H, W) float32`` on the CPU, at the input's resolution, one per entry of
    ``targets``. ``signed`` says whether negative values mean "against the target".
    ``completeness`` ``(T, 2)`` (integrated gradients): the sum of each map's attributions
    and the score difference ``S(x) - S(baseline)`` that it should equal.
    """

    method: str
    layer: str | None
    signed: bool
    predictions: tuple[Prediction, ...]
    targets: tuple[Prediction, ...]
    maps: torch.Tensor
    completeness: torch.Tensor | None = None


class _Scores(nn.Module):
    """The model with one output chosen: ``(N, C, H, W) -> (N, K)`` scores.

    ``on_batch(N)`` is called before every forward: progress, and the place to stop a long
    call (an exception raised there ends the attribution; the model is restored all the same).
    ``first`` keeps the scores of the first image of the first forward. With ``top``, the
    forward returns each image's largest score ``(N, 1)`` instead: its gradient is the top
    class's, so a method that starts at the image needs no prediction forward of its own.
    """

    def __init__(
        self,
        model: nn.Module,
        output: OutputChoice,
        on_batch: Callable[[int], None] | None,
        top: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.on_batch = on_batch
        self.top = top
        self.forwards = 0
        self.first: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_batch is not None:
            self.on_batch(int(x.shape[0]))
        self.forwards += 1
        scores = _choose(self.model(x), self.output)
        if self.first is None:
            self.first = scores[:1].detach().float()
        return scores.amax(dim=1, keepdim=True) if self.top else scores


def _describe(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    if isinstance(output, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in output.items()) + "}"
    if isinstance(output, tuple | list):
        return "(" + ", ".join(_describe(v) for v in output) + ")"
    return type(output).__name__


def _choose(output: object, choice: OutputChoice) -> torch.Tensor:
    """The ``(N, K)`` scores in a model's output; ``choice`` picks one of several outputs."""
    chosen = output
    if isinstance(output, tuple | list):
        if isinstance(choice, str) and choice.isdigit():
            choice = int(choice)  # a form field
        if not isinstance(choice, int) or isinstance(choice, bool):
            raise InvalidArgumentError(
                f"the model returns {len(output)} outputs, shaped {_describe(output)}; choose "
                f"the one to explain with 'output' (0..{len(output) - 1})"
            )
        if not 0 <= choice < len(output):
            raise InvalidArgumentError(
                f"output {choice} is out of range: the model returns {len(output)} outputs "
                f"(valid: 0..{len(output) - 1})"
            )
        chosen = output[choice]
    elif isinstance(output, Mapping):
        if choice not in output:
            keys = ", ".join(map(repr, output))
            raise InvalidArgumentError(
                f"the model returns outputs named {keys}; choose the one to explain with "
                f"'output' (got {choice!r})"
            )
        chosen = output[choice]
    elif choice is not None:
        raise InvalidArgumentError(
            f"the model returns one tensor {_describe(output)}; omit 'output' (got {choice!r})"
        )
    if not isinstance(chosen, torch.Tensor) or chosen.dim() not in (1, 2):
        raise InvalidArgumentError(
            f"attribution explains one score per class, (N, K); the chosen output is shaped "
            f"{_describe(chosen)}"
            + ("; choose another with 'output'" if chosen is not output else "")
        )
    return chosen.unsqueeze(1) if chosen.dim() == 1 else chosen


@contextlib.contextmanager
def _out_of_place(model: nn.Module) -> Iterator[None]:
    """In-place activations off for the block: they overwrite what gradients need."""
    flags = [
        (m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)
    ]
    try:
        for module, _ in flags:
            module.inplace = False  # type: ignore[assignment]
        yield
    finally:
        for module, inplace in flags:
            module.inplace = inplace


@contextlib.contextmanager
def _counting_calls(
    module: nn.Module | None,
    scorer: _Scores,
    call: int,
    layer: str | None,
    model_name: str,
    shape: tuple[int, ...] = (),
) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
    """``(forward, output shape)`` of ``module``'s calls during the block (a hook removed
    after); a ``call`` of the layer whose per-image shape is not ``shape`` stops the forward
    at once."""
    seen: list[tuple[int, tuple[int, ...]]] = []
    if module is None:
        yield seen
        return

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        index = sum(1 for forward, _ in seen if forward == scorer.forwards)
        seen.append((scorer.forwards, got))
        if index == call and got[1:] != shape:
            raise LayerShapeError(
                f"layer {layer!r} of model {model_name!r} outputs {got[1:]} per image, not "
                f"the {shape} it lists; Grad-CAM needs the layer's maps"
            )

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _layer_module(model: nn.Module, layer: str, model_name: str) -> tuple[nn.Module, int]:
    """The module that computes ``layer`` and which of its calls it is (0: the first)."""
    found = layer_index(model, name=model_name).module_of(layer)  # UnknownLayerError
    if found is None:
        convs = ", ".join(map(repr, kernel_layers(model)[-3:]))
        raise LayerShapeError(
            f"layer {layer!r} of model {model_name!r} is a functional op, not a module's "
            f"output; Grad-CAM hooks a module, such as {convs}"
        )
    name, call = found
    return dict(model.named_modules())[name], call


def _check_layer_calls(count: int, call: int, layer: str, model_name: str) -> None:
    """Captum keeps a hooked module's last output: ``layer`` must be its last call."""
    if call != count - 1:
        module = layer.partition(":")[0]
        last = module if count == 1 else f"{module}:{count - 1}"
        runs = "never runs" if count == 0 else f"runs {count} times"
        raise LayerShapeError(
            f"layer {layer!r} of model {model_name!r} is call {call} of module {module!r}, "
            f"which {runs} in a forward pass; Grad-CAM reads a module's last call: choose "
            f"{last!r} or another layer"
        )


def _resolve_targets(
    targets: Sequence[int | str] | None, labels: Sequence[str], top: int
) -> list[int]:
    count = len(labels)
    if targets is None:
        return [top]
    if len(targets) == 0:
        raise InvalidArgumentError("targets is empty; omit it to explain the top prediction")
    resolved: list[int] = []
    for target in targets:
        if isinstance(target, str) and target in labels:
            index = labels.index(target)
        elif isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            close = difflib.get_close_matches(target, labels, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise InvalidArgumentError(
                f"unknown target {target!r}; {hint}a target is a class index 0..{count - 1} "
                "or a label",
                listing=("models",),
            )
        else:
            index = int(target)
        if not 0 <= index < count:
            raise InvalidArgumentError(
                f"target {index} is out of range: the model has {count} classes "
                f"(valid: 0..{count - 1})"
            )
        resolved.append(index)
    unique = list(dict.fromkeys(resolved))
    if len(unique) > MAX_TARGETS:
        raise InvalidArgumentError(f"at most {MAX_TARGETS} targets per call, got {len(unique)}")
    return unique


def default_window(size: tuple[int, int]) -> tuple[int, int]:
    """Occlusion's default ``(window, stride)`` for an input of ``size``: an eighth of the
    shorter side, slid by half of it (15 × 15 patches on a square input)."""
    window = max(1, round(min(size) / 8))
    return window, max(1, window // 2)


def patches(size: tuple[int, int], window: int, stride: int) -> int:
    """Occlusion's patch positions on an input of ``size`` ``(H, W)``."""
    return math.prod((side - window) // stride + 1 for side in size)


def planned_passes(
    method: str,
    size: tuple[int, int],
    *,
    targets: int = 1,
    steps: int = 32,
    window: int | None = None,
    stride: int | None = None,
    channels: int = 0,
    samples: int = 1,
) -> int:
    """How many images the model will run on for these settings, before running anything.

    The figure a caller bounds (a synchronous request, say); ``size`` is the input's
    ``(H, W)``, ``channels`` the layer's (Score-CAM), ``samples`` a noise tunnel's (1: none).
    InvalidArgumentError for an unknown method.
    """
    auto_window, auto_stride = default_window(size)
    window = window or auto_window
    stride = stride or min(auto_stride, window)
    count = patches(size, max(window, 1), max(stride, 1))
    inputs = CostInputs(targets, steps, count, channels, samples)
    return get_method(method).images(inputs)


def _check_smooth(smooth: Smooth | None, method: AttributionMethod) -> None:
    if smooth is None:
        return
    if not method.smoothable:
        names = ", ".join(m.name for m in methods() if m.smoothable)
        raise InvalidArgumentError(
            f"method {method.name!r} is not a gradient method: 'smooth' works with {names}"
        )
    if smooth.type not in SMOOTH_TYPES:
        raise InvalidArgumentError(
            f"unknown smoothing {smooth.type!r}; choose one of: {', '.join(SMOOTH_TYPES)}"
        )
    if not 1 <= smooth.samples <= MAX_NOISE_SAMPLES:
        raise InvalidArgumentError(
            f"noise_samples must be 1..{MAX_NOISE_SAMPLES}, got {smooth.samples}"
        )
    if not 0.0 < smooth.level <= 1.0:
        raise InvalidArgumentError(f"noise_level must be in (0, 1], got {smooth.level}")


def _check_settings(steps: int, window: int, stride: int, size: tuple[int, int]) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidArgumentError(f"steps must be 1..{MAX_STEPS}, got {steps}")
    if not 1 <= window <= min(size):
        raise InvalidArgumentError(
            f"window must be 1..{min(size)} (the input's shorter side), got {window}"
        )
    if not 1 <= stride <= window:
        raise InvalidArgumentError(f"stride must be 1..window ({window}), got {stride}")


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    *,
    targets: Sequence[int | str] | None = None,
    layer: str | None = None,
    output: OutputChoice = None,
    labels: Sequence[str] = (),
    baseline: torch.Tensor | None = None,
    steps: int = 32,
    window: int | None = None,
    stride: int | None = None,
    top: int = 5,
    model_name: str = "model",
    on_batch: Callable[[int], None] | None = None,
    axes: Mapping[str, AxesDecl] | None = None,
    smooth: Smooth | None = None,
) -> Attribution:
    """Attribution maps of ``targets`` for one image ``x``, with the model's top predictions.

    ``x`` is ``(C, H, W)`` or ``(1, C, H, W)`` float, normalised as the model expects.
    ``method`` is a registered method (:func:`cnnviz.attribution.method_names`); ``layer``
    the module (qualified name) of Grad-CAM and guided Grad-CAM. ``targets`` are class
    indices or ``labels``; default the top prediction; several share the passes the method
    allows. ``output`` picks the scores of a model with several outputs (an index into a
    tuple, or a key). ``baseline`` ``(1, C, H, W)`` (default zeros, i.e. the normalisation's
    mean) is integrated gradients' start and occlusion's patch. ``steps``: integrated
    gradients' steps; ``window``/``stride``: occlusion's square patch in pixels.
    ``on_batch(n)`` is called before each batch of ``n`` images the method runs (see
    :func:`planned_passes` for the total): progress, and cancellation by raising. ``axes``:
    declared axes by layer pattern (:func:`cnnviz.axes.parse_axes_table`) for a model whose
    layer index this call builds (a replica). ``smooth`` runs a gradient method in a noise
    tunnel (:class:`cnnviz.attribution.Smooth`).

    Raises :class:`InvalidArgumentError`, :class:`UnknownLayerError` or
    :class:`LayerShapeError` with a message naming the bad value and the valid choices.
    """
    chosen = get_method(method)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise InvalidArgumentError(f"x must be (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    size = (int(x.shape[2]), int(x.shape[3]))
    auto_window, auto_stride = default_window(size)
    window = window or auto_window
    stride = stride or min(auto_stride, window)
    _check_settings(steps, window, stride, size)
    _check_smooth(smooth, chosen)
    if chosen.needs_layer and layer is None:
        convs = ", ".join(map(repr, kernel_layers(model)[-3:]))
        raise InvalidArgumentError(
            f"method {chosen.name!r} needs a layer, e.g. one of the last convolutions: "
            f"{convs or '(none)'}",
            listing=("layers", model_name),
        )
    if not chosen.needs_layer:
        layer = None  # the other methods explain the input alone
    index = layer_index(model, (x.shape[1], x.shape[2], x.shape[3]), model_name, axes)
    module, call = _layer_module(model, layer, model_name) if layer else (None, 0)
    # The layer's axes (AmbiguousAxesError when unknown): Grad-CAM reads its maps unit-first.
    info = index.usable([layer])[0] if layer else None
    if info is not None and info.axes == "vector":
        raise LayerShapeError(
            f"layer {layer!r} of model {model_name!r} outputs {info.shape} per image, a vector "
            "with no grid; Grad-CAM needs a layer with a grid: (C, H, W), (H, W, C) or tokens"
        )
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    if baseline is not None:
        baseline = baseline.to(device=x.device, dtype=x.dtype).expand_as(x)
    # Without targets, a method that starts at the image finds the top class itself.
    quick = targets is None and chosen.local
    scorer = _Scores(model, output, on_batch, top=quick)
    # Frozen: gradients of the input only; no .grad left on weights.
    with preserved_state(model, frozen=True), _out_of_place(model):
        shape = info.shape if info is not None else ()
        with _counting_calls(module, scorer, call, layer, model_name, shape) as calls:
            if not quick:
                with torch.no_grad():
                    scorer.first = _choose(model(x), output)[:1].float()  # (1, K)
            names, predictions, indices = _targets(scorer.first, labels, targets, top, quick)
            task = AttributionTask(
                scores=scorer,
                x=x.detach(),
                targets=[0] if quick else indices,
                layer=module,
                axes=info,
                baseline=baseline,
                steps=steps,
                window=window,
                stride=stride,
                smooth=smooth,
            )
            # Gradients even when the caller runs under no_grad or inference_mode.
            with torch.inference_mode(False), torch.enable_grad():
                result = chosen.attribute(task)
        if module is not None and layer is not None:
            first = 1 if quick else 0  # the probe forward is number 0
            _check_layer_calls(sum(f == first for f, _ in calls), call, layer, model_name)
    if quick:  # the scores came with the method's first forward
        names, predictions, indices = _targets(scorer.first, labels, None, top, False)
    assert scorer.first is not None
    every = {p.index: p for p in _predictions(scorer.first[0], names, len(names))}
    return Attribution(
        method=chosen.name,
        layer=layer,
        signed=chosen.signed,
        predictions=tuple(predictions),
        targets=tuple(every[i] for i in indices),
        maps=result.maps.cpu(),
        completeness=None if result.completeness is None else result.completeness.cpu(),
    )


def _targets(
    first: torch.Tensor | None,
    labels: Sequence[str],
    targets: Sequence[int | str] | None,
    top: int,
    quick: bool,
) -> tuple[list[str], list[Prediction], list[int]]:
    """Class names, the top predictions and the target indices, from the scores ``(1, K)``.

    With ``quick`` the scores are not known yet (the method's own forward finds them): the
    names and predictions are filled in afterwards and the one target is the top class.
    """
    if quick:
        return [], [], [0]
    assert first is not None
    count = first.shape[1]
    names = list(labels) if len(labels) == count else [str(i) for i in range(count)]
    predictions = _predictions(first[0], names, max(1, top))
    return names, predictions, _resolve_targets(targets, names, predictions[0].index)


def _predictions(scores: torch.Tensor, names: Sequence[str], top: int = 5) -> list[Prediction]:
    """The ``top`` classes of ``scores`` ``(K,)``, best first (ties by index)."""
    count = scores.shape[0]
    probs = torch.softmax(scores, dim=0) if count > 1 else None
    order = torch.sort(scores, descending=True, stable=True).indices[:top]
    return [
        Prediction(
            index=int(i),
            label=names[int(i)],
            score=float(scores[i]),
            probability=None if probs is None else float(probs[i]),
        )
        for i in order
    ]
