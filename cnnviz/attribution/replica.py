"""A private copy of a model for attribution, used by one call at a time.

Captum installs hooks on a model's modules for the length of a call (Grad-CAM's forward hook
on the layer, guided backpropagation's on every ReLU). On a model that other threads run at
the same time (feature maps, another attribution) those hooks would see their forwards, and
they would see the hooks. A process that shares its models gives attribution a deep copy of
each instead, made once and kept as long as the model, and lets one call at a time use it.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Iterator

from torch import nn

__all__ = ["exclusive_copy"]

_copies: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, threading.Lock]]
_copies = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@contextlib.contextmanager
def exclusive_copy(model: nn.Module) -> Iterator[nn.Module]:
    """A deep copy of ``model`` (made on first use), held by this call alone in the block.

    The copy costs the model's memory once more; calls for one model wait for each other.
    """
    with _lock:
        found = _copies.get(model)
        if found is None:
            found = (copy.deepcopy(model), threading.Lock())
            _copies[model] = found
    replica, in_use = found
    with in_use:
        yield replica
