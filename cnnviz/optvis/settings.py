"""How a render runs: its settings, and the memory budget a device gives a job."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cnnviz.errors import InvalidArgumentError
from cnnviz.precision import PRECISIONS, Precision

__all__ = ["DEFAULT_MEMORY_BUDGET_MB", "RenderSettings", "device_memory_budget_mb"]

_MIB = 1 << 20
DEFAULT_MEMORY_BUDGET_MB = 1024


@dataclass(frozen=True)
class RenderSettings:
    """How to optimize. The defaults give readable patterns (Lucid's recipe).

    - ``steps``, ``lr``: Adam steps and learning rate (Lucid: 512 steps at 0.05; 256 already
      converge on small models and mid layers).
    - ``image_size``: side of the optimized image; ``None``: the model's input size; smaller
      images are upsampled to the input size.
    - ``param``: ``"fourier"`` (1/f-scaled spectrum, smooth) or ``"pixel"``;
      ``decorrelate``: optimize in decorrelated colour space (3-channel models).
    - ``transforms``: ``"standard"`` (pad, jitter, scale, rotate, jitter) or ``"none"``.
    - ``redirect_relu_steps``: redirect ReLU gradients during the first N steps, so units
      that start inactive get a gradient (0: off). Lucid redirects for the whole run; once
      a unit is alive the redirected gradient equals the plain one, so a short window gives
      the same images for less work (all 32 channels of ``shapes`` ``block2.relu``: identical
      with 16 and 256 redirected steps). Needs an FX-traceable model; models
      served through the hook fallback run without it.
    - ``memory_budget_mb``: bound on what one chunk's step allocates (activations saved for
      backward and their gradients, parameters and Adam state; on CPU also the result
      images), not counting the model's weights.
    - ``seed``: every random number of the run derives from it.
    - ``l1``, ``l2``, ``tv``: weights of penalties on the image, added to the objective;
      ``diversity``: weight of the diversity term on the objective's first layer.
    - ``precision``: the model's forward and backward in ``"fp32"``, ``"bf16"`` or ``"fp16"``
      autocast, or ``"auto"``: bf16 on a CPU where bf16 is faster than fp32 and on CUDA
      devices that have it, fp16 (with a gradient scaler) on older CUDA devices, fp32
      elsewhere; channels-last input on CPU and CUDA (see :mod:`cnnviz.precision`). The image
      parameters, Adam's state and every reported objective value stay fp32; the final and
      initial objectives are evaluated in fp32 whatever the precision. The precision used is
      in the result.
    - ``compile``: run the steps past the redirected ones through the step graph compiled by
      ``torch.compile`` (:mod:`cnnviz.optvis.compiled`), compiling it first where it is not
      ready. Not bit-identical to eager: in fp32 the final objectives stay within 1e-3
      (relative) of an eager render's on the tested nets.
    """

    steps: int = 256
    lr: float = 0.05
    image_size: int | None = None
    param: Literal["fourier", "pixel"] = "fourier"
    decorrelate: bool = True
    transforms: Literal["standard", "none"] = "standard"
    redirect_relu_steps: int = 16
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    seed: int = 0
    l1: float = 0.0
    l2: float = 0.0
    tv: float = 0.0
    diversity: float = 0.0
    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.image_size is None or self.image_size >= 8, "image_size must be at least 8"),
            (self.param in ("fourier", "pixel"), "param must be 'fourier' or 'pixel'"),
            (self.transforms in ("standard", "none"), "transforms must be 'standard' or 'none'"),
            (self.redirect_relu_steps >= 0, "redirect_relu_steps must be >= 0"),
            (self.memory_budget_mb >= 1, "memory_budget_mb must be at least 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        checks += [
            (math.isfinite(w) and w >= 0, f"{name} must be a finite weight >= 0")
            for name, w in (("l1", self.l1), ("l2", self.l2), ("tv", self.tv))
        ]
        checks.append((math.isfinite(self.diversity) and self.diversity >= 0, "bad diversity"))
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"{message}; got settings {self}")


def device_memory_budget_mb(device: torch.device | str) -> int:
    """A memory budget that suits ``device``: ``DEFAULT_MEMORY_BUDGET_MB``, and on a CUDA
    device a quarter of its memory where that is more (35 GiB on a 141 GB card), so a whole
    layer runs on a large GPU in one or a few chunks that keep it busy, rather than in many
    that each leave it idle. From the card's size, not from what is free at the moment, so a
    job resumed from a checkpoint on the same kind of card is cut into the same chunks."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MEMORY_BUDGET_MB
    total = torch.cuda.get_device_properties(device).total_memory
    return max(DEFAULT_MEMORY_BUDGET_MB, total // 4 // _MIB)
