"""Keeping the memory of freed tensors in the process while it works (glibc on Linux).

A CPU tensor's memory comes from the C library's ``malloc``. glibc's defaults suit a program
whose allocations vary, not one that frees and allocates the same activations at every
optimization step or forward pass:

* a block above the mmap threshold (it adapts, up to 32 MiB) is a fresh mapping each time,
  unmapped when freed;
* once more than the trim threshold is free at the top of the heap, it goes back to the
  system;
* a thread other than the main one allocates from an arena of its own, which holds at most
  64 MiB and maps every larger block itself.

Either way, the next step faults the pages in again, each zero-filled by the kernel. For a
resnet18 job to ``layer3`` through the service on a 2-core CPU, that was 1,700-2,500 page
faults per image and step; kept, 300-460, and the job took 0.96-0.97 of the CPU time
(``python -m bench.allocator``).

:func:`keep_freed_memory` makes every block come from one heap (the main arena's) and keeps
what is freed; the next step reuses it without a fault. :func:`release_freed_memory` hands
what is free back to the system: the in-process transport calls it after each job, a Celery
pool child after each task, so an idle process does not hold a job's peak. Elsewhere
(another C library, another system) both do nothing.

    keep_freed_memory()      # once, at process start, before threads allocate
    ...                      # jobs, requests
    release_freed_memory()   # after a job
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
import sys
import threading

__all__ = ["keep_freed_memory", "keeping_freed_memory", "release_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# What may stay free at the top of the heap: the most mallopt takes (an int), 2 GiB.
_KEEP_BYTES = 2**31 - 1

_lock = threading.Lock()
_kept = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc with ``mallopt`` and ``malloc_trim``."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Serve every allocation from one heap and keep freed memory; whether it is in effect.

    Call it early, before threads allocate: a thread keeps the arena it first allocated from.
    Idempotent.
    """
    global _kept
    with _lock:
        if _kept:
            return True
        libc = _glibc()
        if libc is None:
            return False
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES))
        for param, value in settings:
            if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
                log.warning("mallopt(%d, %d) refused: freed memory is not kept", param, value)
                return False
        _kept = True
        return True


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _kept


def release_freed_memory() -> None:
    """Hand the free memory of the heaps back to the system (glibc's ``malloc_trim(0)``).

    Kept or not, glibc holds on to some of what a thread freed (with kept memory, all of it):
    without a release, a process's RSS after a job stays near the job's peak, whatever it
    still uses. Elsewhere, nothing.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
