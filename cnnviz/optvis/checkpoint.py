"""A render's state between two steps, to resume it where it stopped.

A render is deterministic for its seed: each unit's starting parameters and every step's
transform parameters come from generators seeded by ``(seed, unit, stream)`` and are drawn
up front, so what a resumed render needs is only what the steps changed: the parameters of
the chunk being optimized, Adam's state, the step, the finished chunks' images and
objective values, torch's global RNG state (for any operation that draws from it) and, in
fp16, the gradient scaler's state. A
render resumed from a checkpoint gives the same result as one that never stopped, on CPU
bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cnnviz.errors import InvalidArgumentError

__all__ = ["RenderCheckpoint"]


@dataclass(frozen=True)
class RenderCheckpoint:
    """The state of a render after ``step`` steps of chunk ``chunk``.

    - ``raw``: ``(n, *raw_shape)`` float32 on CPU, the chunk's parameters;
    - ``optimizer``: the chunk's ``torch.optim.Adam.state_dict()`` (tensors on CPU);
    - ``images``: ``(N, C, S, S)`` float32 on CPU, final for the chunks before ``chunk``;
    - ``initial``, ``final``, ``latest``: per-unit objective values, as the render keeps them;
    - ``rng``: ``torch.get_rng_state()``;
    - ``scaler``: the fp16 gradient scaler's ``state_dict()`` (empty in other precisions).
    """

    chunk: int
    step: int
    raw: torch.Tensor
    optimizer: dict[str, Any]
    images: torch.Tensor
    initial: list[float]
    final: list[float]
    latest: list[float]
    rng: torch.Tensor
    scaler: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialized with ``torch.save``; read back by :meth:`from_bytes` (weights_only)."""
        buffer = io.BytesIO()
        torch.save(asdict(self), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RenderCheckpoint:
        """The checkpoint :meth:`to_bytes` wrote; only tensors and plain values are loaded."""
        try:
            fields = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            return cls(**fields)
        except Exception as exc:  # a truncated or foreign blob: say so, do not guess
            raise InvalidArgumentError(f"not a render checkpoint: {exc}") from exc
