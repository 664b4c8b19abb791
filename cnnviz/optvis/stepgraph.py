"""The graphs an optimization step runs, built once per extractor and weights, not per render.

A step runs a copy of the truncated extractor with its batch norms folded
(:mod:`cnnviz.optvis.fold`) and, when asked, a further copy with redirected ReLUs
(:mod:`cnnviz.optvis.redirect`). Building a copy generates Python source for it, which torch
keeps for good in ``linecache`` (for tracebacks): rebuilt at every render, that was a few KB
more per job for as long as the process lived, besides the time spent folding. So the copies
are kept here, for the few extractors used last, and built again only when the weights they
fold have changed (another tensor, or the same one written in place).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import fx

from cnnviz.optvis.fold import fold_batch_norms
from cnnviz.optvis.redirect import redirect_relus

__all__ = ["StepGraphs", "step_graphs"]

# Each entry holds folded copies of the convolutions up to its layers (about 45 MB for
# resnet18 to layer4): a few cover the layers a service is asked about at once.
_KEPT = 4


@dataclass(frozen=True)
class StepGraphs:
    """``folded``: the extractor with batch norms folded; ``redirected``: that graph with
    redirected ReLUs, or ``None`` where it has no ReLU (or none was asked for)."""

    folded: fx.GraphModule
    redirected: fx.GraphModule | None


@dataclass
class _Entry:
    source: weakref.ref[fx.GraphModule]
    weights: tuple[object, ...]
    graphs: StepGraphs
    with_redirect: bool


_lock = threading.Lock()
_entries: OrderedDict[int, _Entry] = OrderedDict()


def _weights(module: fx.GraphModule) -> tuple[object, ...]:
    """What the folded copy was computed from: the tensors, their in-place write counters and
    ``requires_grad`` (which the folded weights take), and the modes (only eval folds)."""
    tensors = [*module.parameters(), *module.buffers()]
    modes = tuple(m.training for m in module.modules())
    return (modes, *((id(t), t.data_ptr(), t._version, t.requires_grad) for t in tensors))


def _build(plain: fx.GraphModule, redirect: bool) -> StepGraphs:
    folded = fold_batch_norms(plain)[0]
    redirected = None
    if redirect:
        copy, count = redirect_relus(folded)
        redirected = copy if count else None
    return StepGraphs(folded, redirected)


def step_graphs(plain: fx.GraphModule, redirect: bool) -> StepGraphs:
    """The step graphs of ``plain`` (in eval mode, as a render runs it), from the cache when
    its weights are unchanged since they were built. Thread-safe; the graphs hold no state
    of a render and may run in several at once."""
    key = id(plain)
    weights = _weights(plain)
    with _lock:
        entry = _entries.get(key)
        fresh = (
            entry is not None
            and entry.source() is plain
            and entry.weights == weights
            and (entry.with_redirect or not redirect)
        )
        if entry is not None and fresh:
            _entries.move_to_end(key)
            return entry.graphs
    with torch.no_grad():
        graphs = _build(plain, redirect)
    with _lock:
        _entries[key] = _Entry(weakref.ref(plain), weights, graphs, redirect)
        _entries.move_to_end(key)
        while len(_entries) > _KEPT:
            _entries.popitem(last=False)
        # Entries whose extractor is gone free their copies now, not when pushed out.
        for stale in [k for k, e in _entries.items() if e.source() is None]:
            del _entries[stale]
    return graphs
