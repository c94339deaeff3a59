"""Process-wide CPU settings that make PyTorch models run faster on Linux.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every block above its mmap threshold (at most
32 MB) with a fresh ``mmap`` and unmaps it on ``free``, so each forward pass of a vision model at batch 32
faults its gigabytes of activations in again, page by page: ~5 million minor page faults per dat_tiny batch-32
inference call, about a quarter of its time. :func:`tune_cpu_allocator` makes glibc keep freed memory in its
heap instead (``mallopt``: no mmap for large blocks, no trimming), so the next call reuses the same pages.
The cost is that the process keeps its peak memory until it exits — what a training or benchmark process does
anyway. Preloading jemalloc or tcmalloc (``LD_PRELOAD``) is the other common cure; this one needs nothing
installed. It changes no numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_ENV_SWITCH = "DATVIT_CPU_ALLOCATOR"  # "system" leaves malloc alone
_tuned = False


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_cpu_allocator(enable: bool = True) -> bool:
    """Keep freed tensor memory in glibc's heap for reuse instead of unmapping it (see the module docstring).

    Returns True when the setting is in effect. Does nothing (returns False) off glibc Linux, when ``enable`` is
    False, or when the environment variable ``DATVIT_CPU_ALLOCATOR=system`` asks for the default behaviour.
    Affects allocations made after the call; call it once, early, in a process you own (the ``datvit`` command
    line does). ``tune_cpu_allocator(False)`` restores glibc's defaults for later allocations.
    """
    global _tuned
    libc = _glibc()
    if libc is None:
        return False
    if os.environ.get(_ENV_SWITCH, "").strip().lower() == "system":
        enable = False
    if enable:
        # M_MMAP_MAX 0: no mmap for large blocks; M_TRIM_THRESHOLD -1: never give the heap's top back
        _tuned = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    else:
        # glibc's defaults: up to 65536 mmapped blocks, 128 KiB trim threshold
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        _tuned = False
    return _tuned


def cpu_allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` is in effect in this process."""
    return _tuned
