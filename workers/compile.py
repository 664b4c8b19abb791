"""Compiled optimization steps in the service: ``CNNVIZ_COMPILE`` decides, per job, at submit.

A job either runs its steps compiled or not, and which one is fixed when the job is
submitted: :meth:`CompilePolicy.decide` writes ``compile: true|false`` into the resolved
request. It is thereby in the job's record (an attempt resumed from a checkpoint runs the
way the first one started), in the result's settings, and in the identity that lets an
identical request reuse a stored result (a compiled and an eager result differ in the last
bits, so they are two results).

- ``on``: every job compiles; a job whose step is not in the cache compiles it first (on
  the job's thread, off the request path; the job waits for it).
- ``off``: no job compiles.
- ``auto`` (the default): a job compiles where its step is already in the shared cache.
  Otherwise it runs eagerly, and where compiling pays on the device that runs it (a CUDA
  device, or a CPU whose precision ``auto`` is bf16 without AMX tiles: on an AMD EPYC with
  ``avx512_bf16`` a compiled step took 0.66x an eager one), that process compiles the step on
  a background thread meanwhile, so the jobs of those shapes submitted after it run compiled.
  Not with AMX (``amx_bf16``): there eager bf16 runs oneDNN's AMX kernels, and a whole job
  (resnet18 ``layer3``, 8 channels, 64 steps, 128 px at 224) took 6.2 s compiled against
  4.7 s eager on a 2-core Xeon, so ``auto`` runs it eagerly. The API decides from the
  cache's markers alone, so a CPU API in front of GPU workers follows what the workers
  compiled. On a CPU that runs fp32 (AVX2 only, no native bf16), a compiled resnet18 step to
  ``layer3`` measured 0.97x eager after a 145 s compile (``bench/compile.py``), so ``auto``
  does not compile.

Whether a step is "in the cache" is a marker file per job shape (model, layer, precision,
torch version) under ``cnnviz-steps/`` of the compile cache, written by whichever process of
the machine (API or worker) finished compiling it; inductor's own FX-graph and AOT caches in
the same directory are what a process then loads instead of compiling.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cnnviz.models import LoadedModel
from cnnviz.optvis.compiled import use_cache_dir
from cnnviz.precision import cpu_has_bf16_tiles, resolve_precision
from workers.config import comma_separated

__all__ = ["CompileMode", "CompilePolicy", "parse_warmup"]

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "on", "off"]
_STEPS_DIR = "cnnviz-steps"


def parse_warmup(value: str) -> tuple[tuple[str, str], ...]:
    """``"r18:layer3, shapes:block2.relu"`` as ``(model, layer)`` pairs; ValueError for an
    entry without a colon."""
    pairs = []
    for entry in comma_separated(value):
        model, sep, layer = entry.partition(":")
        if not sep or not model or not layer:
            raise ValueError(f"CNNVIZ_COMPILE_WARMUP entry {entry!r} is not model:layer")
        pairs.append((model, layer))
    return tuple(pairs)


@dataclass(frozen=True)
class CompilePolicy:
    """``mode`` (see the module doc) and the shared ``cache_dir`` (None: compiling off)."""

    mode: CompileMode = "off"
    cache_dir: Path | None = None

    def setup(self) -> None:
        """Point inductor's caches at ``cache_dir`` (once per process, before compiling)."""
        if self.mode != "off" and self.cache_dir is not None:
            use_cache_dir(self.cache_dir)

    def _key(self, loaded: LoadedModel, layer: str, precision: str) -> str:
        parts = (repr(loaded.spec), layer, precision, torch.__version__)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def _marker(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / _STEPS_DIR / key

    def is_warm(self, loaded: LoadedModel, layer: str, precision: str) -> bool:
        """Whether a process of this machine compiled the step of these shapes."""
        marker = self._marker(self._key(loaded, layer, precision))
        return marker is not None and marker.exists()

    def pays(self, loaded: LoadedModel, precision: str) -> bool:
        """Whether compiling is worth it on ``loaded``'s device (see the module doc)."""
        device = loaded.device
        return device.type == "cuda" or (
            device.type == "cpu"
            and resolve_precision(precision, device).reduced
            # With AMX, eager bf16 is oneDNN's AMX kernels, which a compiled step ran slower.
            and not cpu_has_bf16_tiles()
        )

    def decide(self, loaded: LoadedModel, layer: str, precision: str) -> bool:
        """Whether a job submitted now runs compiled (see the module doc)."""
        if self.mode == "off" or self.cache_dir is None:
            return False
        if self.mode == "on":
            return True
        # The marker alone: the API that decides may sit on another device than the workers
        # that run (a CPU API before GPU workers); markers are written where compiling pays
        # (or where CNNVIZ_COMPILE_WARMUP or 'on' asked for it).
        return self.is_warm(loaded, layer, precision)

    def mark_warm(self, loaded: LoadedModel, layer: str, precision: str) -> None:
        """Record that the step of these shapes is in the cache."""
        marker = self._marker(self._key(loaded, layer, precision))
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def wants_background(self, loaded: LoadedModel, layer: str, precision: str) -> bool:
        """Whether an eager job of these shapes should compile its step beside it."""
        return (
            self.mode == "auto"
            and self.cache_dir is not None
            and self.pays(loaded, precision)
            and not self.is_warm(loaded, layer, precision)
        )
