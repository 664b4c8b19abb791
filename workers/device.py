"""Which torch device a worker's pool child uses.

Decided in the child, at its first job, never in the parent: touching CUDA before the pool
forks would leave every child with a CUDA context it cannot use ("Cannot re-initialize CUDA
in forked subprocess").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from cnnviz.optvis import device_memory_budget_mb


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


def children_budget(setting: str, children: int) -> tuple[str, int]:
    """The device of pool child 0 and the least memory budget over ``children`` pool children
    (a job may go to any of them), in MiB, for ``setting``.

    Asking CUDA in a worker's main process would leave the children it forks unable to use it:
    for ``auto`` and ``cuda`` settings the answer comes from a process of its own
    (``python -m workers.device``), which takes a second or two once, at start; ``auto`` on
    a machine without NVIDIA's device nodes is a CPU, with no such process.
    """
    if setting == "auto" and not Path("/dev/nvidiactl").exists():
        setting = "cpu"
    if setting.startswith("cuda") or setting == "auto":
        command = [sys.executable, "-m", "workers.device", setting, str(children)]
        answer = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
        device, budget = json.loads(answer.stdout)
        return str(device), int(budget)
    return _measure(setting, children)


def _measure(setting: str, children: int) -> tuple[str, int]:
    devices = [choose_device(setting, i) for i in range(max(1, children))]
    return str(devices[0]), min(device_memory_budget_mb(d) for d in devices)


if __name__ == "__main__":  # children_budget's separate process
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]))))
