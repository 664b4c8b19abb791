"""Axes of the layers of a model FX cannot trace, from forward hooks on its modules.

A convolution, pooling or batch norm module gives ``CHW``; a ``Linear`` or ``LayerNorm``
module with a 4-d output gives ``HWC`` (they act on the last axis); a module whose output is a
tensor already seen (a container returning its last child's) or whose input is one, with the
shape kept, keeps its axes; other 4-d outputs are ``CHW`` only when no module of the model is
channels-last; ``(B, N, D)`` outputs are tokens when ``N`` alone fits one grid of the input.
The batch axis is found as in :mod:`cnnviz.axes_inference`, from batches of 2 and 3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from cnnviz.axes import LayerAxes
from cnnviz.axes_inference import (
    CHANNEL_FIRST_MODULES,
    Fact,
    Probe,
    Shape,
    batch_of,
    batched,
    by_token_count,
    to_axes,
)

__all__ = ["hook_axes"]


@contextlib.contextmanager
def _hooks(model: nn.Module, hook: Callable[[str], Callable[..., None]]) -> Iterator[None]:
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_axes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[tuple[str, int], Probe]:
    """``{(module, call): Probe}`` of the listed module outputs of a model FX cannot trace.

    Runs the model on batches of 2 and 3 (the caller sets eval mode and no-grad).
    """
    facts: dict[tuple[str, int], Fact | None] = {}
    input_size = (input_shape[1], input_shape[2])
    two = _hook_run(model, batch_of(model, input_shape, 2), facts)
    three = _hook_run(model, batch_of(model, input_shape, 3), None)
    channels_last = any(f is not None and f.kind == "HWC" for f in facts.values())
    probes: dict[tuple[str, int], Probe] = {}
    for key, shape_two in two.items():
        if not batched(shape_two, three.get(key)):
            continue
        shape = shape_two[1:]
        fact = facts.get(key)
        if fact is None and len(shape) == 3 and not channels_last:
            fact = Fact("CHW")  # no module of this model is channels-last
        if fact is None and len(shape) == 2:
            axes = by_token_count(shape, {}, input_size)
        else:
            axes = to_axes(fact, shape, "the module's type does not say which axis holds units")
            if axes.axes is not None:
                axes = LayerAxes(
                    axes.axes, axes.units, axes.grid, axes.prefix_tokens, "", axes.features_first
                )
        probes[key] = Probe(shape, axes)
    return probes


def _hook_run(
    model: nn.Module, x: torch.Tensor, facts: dict[tuple[str, int], Fact | None] | None
) -> dict[tuple[str, int], Shape]:
    """One forward of ``x``: each module call's output shape; its facts into ``facts``."""
    shapes: dict[tuple[str, int], Shape] = {}
    counts: dict[str, int] = {}
    seen: dict[int, tuple[torch.Tensor, Fact | None]] = {}  # id → (tensor kept alive, fact)

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            call = counts.get(name, 0)
            counts[name] = call + 1
            if not isinstance(output, torch.Tensor):
                return
            shapes[(name, call)] = tuple(output.shape)
            if facts is not None:
                fact = _module_fact(module, inputs, output, seen)
                seen[id(output)] = (output, fact)
                facts[(name, call)] = fact

        return record

    with _hooks(model, hook):
        model(x)
    return shapes


def _module_fact(
    module: nn.Module,
    inputs: tuple[Any, ...],
    output: torch.Tensor,
    seen: dict[int, tuple[torch.Tensor, Fact | None]],
) -> Fact | None:
    if output.dim() == 2:
        return Fact("vector")
    if id(output) in seen:  # a container returning its last child's output
        return seen[id(output)][1]
    if output.dim() == 4:
        if isinstance(module, CHANNEL_FIRST_MODULES):
            return Fact("CHW")
        if isinstance(module, nn.Linear | nn.LayerNorm):
            return Fact("HWC")
    source = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
    if source is not None and id(source) in seen and source.shape == output.shape:
        return seen[id(source)][1]
    return None
