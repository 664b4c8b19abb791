"""Splitting a batch of units into chunks that fit a memory budget.

The memory of one optimization step grows linearly with the number of images: autograd keeps
each layer's saved tensors until the backward pass. :func:`measure_step_bytes` counts them
exactly for a probe batch, through :func:`torch.autograd.graph.saved_tensors_hooks`, without
running a backward pass or needing device memory statistics (so it works on CPU as on GPU).
Two probes (one image, two images) separate the per-image cost from the fixed one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from cnnviz.errors import InvalidArgumentError

__all__ = ["MemoryEstimate", "estimate_memory", "measure_step_bytes", "plan_chunks"]

# The backward pass holds, besides the saved tensors, the gradient flowing into the layer being
# differentiated and the one it produces: about two of the largest saved tensors at a time.
_BACKWARD_BUFFERS = 2
# What autograd saves is not all a step allocates: forward outputs that are not saved, kernel
# workspaces (oneDNN reorders), and the allocator's own slack. Against the peak resident memory
# of resnet18 jobs on CPU (bench/optimize.py), the real growth per image was 1.7-2.0 times the
# saved bytes; scaling by 2 keeps a whole-layer job under its budget.
_RUNTIME_OVERHEAD = 2.0


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    """Identity and size of the memory behind ``tensor`` (shared storages count once)."""
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # opaque tensors (mkldnn) have no storage
        return id(tensor), tensor.numel() * tensor.element_size()


def measure_step_bytes(build: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor]) -> int:
    """Bytes a backward pass of ``build()``'s graph needs: what autograd saves for it, plus
    gradient buffers. Tensors sharing storage with ``exclude`` (the weights) do not count.

    ``build`` runs the forward pass and returns the loss; the graph is dropped unused.
    """
    excluded = {_storage_key(t)[0] for t in exclude}
    saved: dict[int, int] = {}
    # Every saved tensor stays alive until the count is done: a freed one's memory could be
    # handed to a later tensor, whose storage would then count once for both.
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> None:
        key, size = _storage_key(tensor)
        if key not in excluded:
            saved[key] = size
        alive.append(tensor)
        # The graph keeps nothing. Returning the tensor itself would make every saved
        # *output* (a ReLU's, a sigmoid's) hold its own grad_fn, a cycle through autograd's
        # C++ graph that Python's collector cannot see: each probe's whole graph, activations
        # and folded weights, then outlived the job (about 5 MiB a job on `shapes`, 90 MiB on
        # resnet18).
        return None

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("a memory probe's graph is measured, never differentiated")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        build()
    alive.clear()
    return sum(saved.values()) + _BACKWARD_BUFFERS * max(saved.values(), default=0)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one optimization step: ``fixed + per_image * n`` for a chunk of n images."""

    fixed: int
    per_image: int

    def chunk_size(self, budget_bytes: int, reserved: int = 0) -> int:
        """The most images whose step fits ``budget_bytes`` once ``reserved`` is set aside."""
        return max(0, (budget_bytes - reserved - self.fixed) // max(1, self.per_image))


def estimate_memory(
    build: Callable[[int], torch.Tensor], exclude: Sequence[torch.Tensor], per_image_state: int
) -> MemoryEstimate:
    """Probe ``build(1)`` and ``build(2)`` (forward passes of 1 and 2 images, returning the
    loss) and return the step's memory model. ``per_image_state`` is added per image: the
    parameters, their gradient and the optimizer's moments, which live for the whole chunk.
    """
    one = measure_step_bytes(lambda: build(1), exclude)
    two = measure_step_bytes(lambda: build(2), exclude)
    activations = max(two - one, 1)
    fixed = max(0, one - activations)
    return MemoryEstimate(
        fixed=int(_RUNTIME_OVERHEAD * fixed),
        per_image=int(_RUNTIME_OVERHEAD * activations) + per_image_state,
    )


def plan_chunks(groups: Sequence[int], chunk_size: int, keep_groups: bool) -> list[list[int]]:
    """Unit indices per chunk, at most ``chunk_size`` each.

    With ``keep_groups`` (an objective that compares rows, such as diversity), units of the
    same group go into one chunk; a group larger than ``chunk_size`` cannot be split and is an
    error. Otherwise chunks are consecutive runs of units.
    """
    n = len(groups)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if not keep_groups:
        return [list(range(start, min(n, start + chunk_size))) for start in range(0, n, chunk_size)]
    members: dict[int, list[int]] = {}
    for unit, group in enumerate(groups):
        members.setdefault(group, []).append(unit)
    chunks: list[list[int]] = []
    current: list[int] = []
    for units in members.values():
        if len(units) > chunk_size:
            raise InvalidArgumentError(
                f"{len(units)} images of the same unit are compared by diversity and must be "
                f"optimized together, but the memory budget fits {chunk_size}; raise "
                "memory_budget_mb, lower image_size, or ask for fewer copies"
            )
        if len(current) + len(units) > chunk_size:
            chunks.append(current)
            current = []
        current.extend(units)
    if current:
        chunks.append(current)
    return chunks
