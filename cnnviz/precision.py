"""Numeric precision and memory layout of a model's forward (and backward) pass.

A *precision* is what a caller asks for: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
:func:`resolve_precision` turns it into a :class:`Numerics` for a device: the dtype the model
runs in under :func:`torch.autocast`, whether its input is channels-last, and whether
gradients need a scaler (fp16, whose small gradients would underflow).

``"auto"`` picks what is fast *and* safe on the device:

- a CPU on which bf16 computes faster than fp32: one with AMX tiles (``amx_bf16``), or an AMD
  CPU with ``avx512_bf16`` (Zen 4 and later): bf16 autocast, channels-last. On a 2-core AMD
  EPYC with ``avx512_bf16``, a forward and backward of resnet18 to ``layer3`` at 224 px takes
  0.44x the fp32 time for a batch of 8 (0.55x for one image), of which channels-last is about
  0.85x. An Intel CPU with ``avx512_bf16`` but no AMX (an Emerald Rapids guest whose
  hypervisor hides AMX was measured; Cooper Lake was not) is not one: its bf16 dot products
  issue on one port where fp32 multiply-adds issue on two, so a bf16 convolution does no
  more work per cycle and pays for the conversions. On a 2-core Intel Xeon of that kind
  (family 6 model 207), the same forward and backward took 1.37x the fp32 time (51 against
  37 ms an image at a batch of 16), so ``auto`` is fp32 there;
- a CUDA device with bf16 (Ampere and later): bf16, channels-last (tensor cores);
  an older CUDA device: fp16 with a gradient scaler, channels-last;
- anything else: fp32 (a CPU without bf16 emulates it, slower than fp32; fp16 on such a CPU is
  7x slower than fp32), channels-last on CPU, where oneDNN's convolutions are faster in it.

Only the model's forward runs in reduced precision: what the caller optimizes (image
parameters, optimizer state) and what it reads out (objective values, statistics) stay fp32,
because activations are cast back to fp32 as they leave the model (:meth:`Numerics.run`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar, get_args

import torch

from cnnviz.errors import InvalidArgumentError

__all__ = [
    "PRECISIONS",
    "Numerics",
    "Precision",
    "cpu_has_bf16_tiles",
    "cpu_prefers_bf16",
    "resolve_precision",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of bf16 matrix tiles, faster than fp32 on any vendor's CPU.
_BF16_TILE_FLAGS = frozenset({"amx_bf16"})

T = TypeVar("T")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """The CPU's vendor id from ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``; empty
    where there is none)."""
    return _cpuinfo().get("vendor_id", "")


def cpu_has_bf16_tiles() -> bool:
    """Whether this CPU has AMX tiles for bf16 (``amx_bf16``), which oneDNN's eager bf16
    convolutions use."""
    return bool(cpu_flags() & _BF16_TILE_FLAGS)


def cpu_prefers_bf16() -> bool:
    """Whether bf16 computes faster than fp32 on this CPU: AMX tiles (``amx_bf16``), or
    ``avx512_bf16`` on an AMD CPU. Not ``avx512_bf16`` alone on an Intel CPU, where it is
    slower than fp32 (see the module doc)."""
    if cpu_has_bf16_tiles():
        return True
    return "avx512_bf16" in cpu_flags() and cpu_vendor() == "AuthenticAMD"


@dataclass(frozen=True)
class Numerics:
    """How a model runs: ``precision`` (resolved: ``"fp32"``, ``"bf16"`` or ``"fp16"``),
    ``channels_last`` input, on ``device_type``.

    :meth:`run` applies both to one call of a model; :meth:`scaler` is the gradient scaler an
    fp16 backward needs (disabled otherwise).
    """

    precision: Literal["fp32", "bf16", "fp16"]
    channels_last: bool
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def reduced(self) -> bool:
        """Whether the forward runs below fp32."""
        return self.precision != "fp32"

    def exact(self) -> Numerics:
        """The same device in fp32 with a contiguous input: numbers as without this module."""
        return replace(self, precision="fp32", channels_last=False)

    def without_channels_last(self) -> Numerics:
        return replace(self, channels_last=False)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to :attr:`dtype` on the device for the block (nothing for fp32)."""
        if not self.reduced:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, C, H, W)`` in the memory layout the model should see: channels-last, or
        contiguous (an input with other strides, as an einsum makes, would make a model that
        ``.view`` its activations fail)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def run(self, model: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
        """``model(x)`` under this precision and layout; tensors it returns (alone, or as the
        values of a dict) come back as fp32, so what reads them computes in fp32."""
        with self.autocast():
            out = model(self.prepare(x))
        if not self.reduced:
            return out
        if isinstance(out, torch.Tensor):
            return out.float()  # type: ignore[return-value]
        if isinstance(out, dict):
            return {  # type: ignore[return-value]
                k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in out.items()
            }
        return out

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for an fp16 backward; a disabled (pass-through) one otherwise."""
        enabled = self.precision == "fp16" and self.device_type in ("cuda", "cpu")
        return torch.amp.GradScaler(self.device_type if enabled else "cpu", enabled=enabled)


def _cuda_has_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(precision: str, device: torch.device | str) -> Numerics:
    """The :class:`Numerics` that ``precision`` means on ``device`` (see the module doc).

    An explicit ``"bf16"`` or ``"fp16"`` is honoured wherever torch can autocast to it, even
    where it is emulated and slow; InvalidArgumentError for an unknown precision or a device
    without autocast.
    """
    if precision not in PRECISIONS:
        raise InvalidArgumentError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    device = torch.device(device)
    kind = device.type
    # Convolutions in oneDNN (CPU) and cuDNN (tensor cores) are faster channels-last.
    channels_last = kind in ("cpu", "cuda")
    resolved: Literal["fp32", "bf16", "fp16"]
    if precision == "auto":
        if kind == "cpu":
            resolved = "bf16" if cpu_prefers_bf16() else "fp32"
        elif kind == "cuda":
            resolved = "bf16" if _cuda_has_bf16(device) else "fp16"
        else:
            resolved = "fp32"
        return Numerics(resolved, channels_last, kind)
    if precision != "fp32" and not torch.amp.is_autocast_available(kind):
        raise InvalidArgumentError(
            f"precision {precision!r} needs autocast, which torch lacks on device {kind!r}; "
            "use 'fp32' or 'auto'"
        )
    resolved = "fp32" if precision == "fp32" else "bf16" if precision == "bf16" else "fp16"
    return Numerics(resolved, channels_last, kind)
