"""Compiled optimization steps: ``torch.compile`` of a render's step graph, shared by renders.

A render's step runs the folded extractor (:mod:`cnnviz.optvis.stepgraph`) forward and
backward. Compiled, inductor fuses the pointwise work around the convolutions; the compile
costs tens of seconds to minutes on a CPU, so it is paid once per machine, not per process:
:func:`use_cache_dir` points inductor's FX-graph and AOT-autograd caches (on by default in
torch 2.14) at a directory that every process of the machine shares, and a process that finds
a graph there loads it (seconds) instead of compiling it. The parameters are graph inputs
(dynamo's inlined modules), so the cache holds for other weights of the same shapes.

What is compiled: the step graph alone, with the batch dimension dynamic, so that every
chunk size from 2 up shares one graph (a chunk of one image is specialised by torch and
compiles its own). The first ``redirect_relu_steps`` steps, the exact fp32 evaluations, the
parameterization, the transforms and the objective run eagerly as before.

The core decides nothing: a render is told to run compiled (``RenderSettings.compile``) and
then runs compiled, compiling on its own thread where the graph is not ready; a caller that
must not wait compiles with :func:`compile_in_background` and runs eagerly meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx

from cnnviz.precision import Numerics

__all__ = ["compile_in_background", "compiled_graph", "step_key", "use_cache_dir"]

log = logging.getLogger(__name__)


def use_cache_dir(path: str | Path) -> Path:
    """Keep inductor's on-disk caches (FX graphs, AOT autograd, kernels) under ``path``,
    created if missing; call before the first compile of the process."""
    directory = Path(path).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    import torch._functorch.config as aot_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    aot_config.enable_autograd_cache = True
    return directory


def step_key(graph: fx.GraphModule, numerics: Numerics, input_shape: tuple[int, ...]) -> str:
    """What a compiled step depends on, as a hex digest: the graph's code, its parameters'
    shapes and dtypes, the numerics, the input's ``(C, H, W)`` and torch's version."""
    tensors = [*graph.parameters(), *graph.buffers()]
    parts = [
        graph.code,
        repr([(tuple(t.shape), str(t.dtype)) for t in tensors]),
        repr(numerics),
        repr(tuple(input_shape)),
        torch.__version__,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass
class _Entry:
    source: weakref.ref[fx.GraphModule]
    module: Callable[[torch.Tensor], object]
    ready: threading.Event = field(default_factory=threading.Event)
    compiling: bool = False


_lock = threading.Lock()
_entries: dict[tuple[int, str], _Entry] = {}


def _entry(graph: fx.GraphModule, key: str) -> _Entry:
    with _lock:
        for stale in [k for k, e in _entries.items() if e.source() is None]:
            del _entries[stale]
        entry = _entries.get((id(graph), key))
        if entry is None or entry.source() is not graph:
            entry = _Entry(weakref.ref(graph), torch.compile(graph, dynamic=None))
            _entries[(id(graph), key)] = entry
        return entry


def compiled_graph(
    graph: fx.GraphModule, numerics: Numerics, input_shape: tuple[int, ...]
) -> Callable[[torch.Tensor], object]:
    """``graph`` compiled, as a callable of ``(n, C, H, W)`` with a dynamic batch; the first
    call of a graph not in the cache compiles it (on the calling thread)."""
    key = step_key(graph, numerics, input_shape)
    entry = _entry(graph, key)

    def run(x: torch.Tensor) -> object:
        if x.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        out = entry.module(x)
        entry.ready.set()
        return out

    return run


def _warm(graph: fx.GraphModule, numerics: Numerics, input_shape: tuple[int, ...]) -> None:
    """One forward and backward of two images of zeros through the compiled graph."""
    device = next(graph.parameters()).device
    run = compiled_graph(graph, numerics, input_shape)
    x = torch.zeros((2, *input_shape), device=device, requires_grad=True)
    out = numerics.run(run, x.to(next(graph.parameters()).dtype))
    tensors = out.values() if isinstance(out, dict) else [out]
    total = sum(t.float().sum() for t in tensors if isinstance(t, torch.Tensor))
    if isinstance(total, torch.Tensor) and total.requires_grad:
        total.backward()


def compile_in_background(
    graph: fx.GraphModule,
    numerics: Numerics,
    input_shape: tuple[int, ...],
    on_done: Callable[[BaseException | None], None] | None = None,
) -> threading.Thread | None:
    """Compile ``graph``'s step on a daemon thread (forward and backward of a batch of
    two), so that later renders find it ready; None where it is ready or being compiled.
    ``on_done`` gets the exception of a compile that failed (logged, never raised)."""
    key = step_key(graph, numerics, input_shape)
    entry = _entry(graph, key)
    with _lock:
        if entry.ready.is_set() or entry.compiling:
            return None
        entry.compiling = True

    def work() -> None:
        error: BaseException | None = None
        try:
            _warm(graph, numerics, input_shape)
        except Exception as exc:  # a graph inductor cannot take stays eager
            log.warning("compiling the step graph %s failed: %s", key, exc)
            error = exc
        finally:
            with _lock:
                entry.compiling = False
        if on_done is not None:
            on_done(error)

    thread = threading.Thread(target=work, name=f"cnnviz-compile-{key[:8]}", daemon=True)
    thread.start()
    return thread
