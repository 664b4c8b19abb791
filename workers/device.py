"""Which torch device a worker's pool child uses.

Decided in the child, at its first job, never in the parent: touching CUDA before the pool
forks would leave every child with a CUDA context it cannot use ("Cannot re-initialize CUDA
in forked subprocess").
"""

from __future__ import annotations

import torch


def choose_device(setting: str, child_index: int = 0) -> torch.device:
    """The device for ``setting`` (see ``CNNVIZ_WORKER_DEVICE``) in pool child ``child_index``.

    ``auto`` and ``cuda`` give child ``i`` the GPU ``i mod count``, so a worker started with
    one child per GPU spreads its children over the GPUs; ``auto`` falls back to the CPU.
    """
    if setting == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        setting = "cuda"
    if setting == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("CNNVIZ_WORKER_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda", child_index % count)
    return torch.device(setting)


def child_index() -> int:
    """The index of this prefork pool child (0 outside a pool)."""
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)
