"""Process-wide CPU settings that make PyTorch models run faster on Linux.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every block above its mmap threshold (at most
32 MB) with a fresh ``mmap`` and unmaps it on ``free``, so each forward pass of a vision model at batch 32
faults its gigabytes of activations in again, page by page: ~5 million minor page faults per dat_tiny batch-32
inference call, about a quarter of its time. :func:`tune_cpu_allocator` makes glibc keep freed memory in its
heap instead (``mallopt``: no mmap for large blocks, no trimming), so the next call reuses the same pages.
The cost is that the process keeps its peak memory until it exits — what a training or benchmark process does
anyway. Preloading jemalloc or tcmalloc (``LD_PRELOAD``) is the other common cure; this one needs nothing
installed. It changes no numbers.

:func:`preserve_signal_stack` guards a thread's alternate signal stack across calls into native libraries that
replace it (OpenVINO's CPU plugin does, and frees its stack later, possibly from another thread: the next signal
to the first thread — a child process exiting — then kills the process with SIGSEGV).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from typing import Iterator, Optional

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


class _SignalStack(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SS_DISABLE = 2


def _fields(stack: _SignalStack) -> tuple:
    return stack.ss_sp, stack.ss_size, stack.ss_flags


def _signal_stack(libc: ctypes.CDLL) -> Optional[_SignalStack]:
    stack = _SignalStack()
    return stack if libc.sigaltstack(None, ctypes.byref(stack)) == 0 else None


# Alternate signal stacks datvit gave threads (see ``preserve_signal_stack``), kept for the life of the process.
_kept_stacks: list = []


@contextlib.contextmanager
def preserve_signal_stack() -> Iterator[None]:
    """Keep the calling thread on an alternate signal stack (``sigaltstack``) that no library can free, whatever a
    native library set during the block.

    OpenVINO's CPU plugin (2026.4) installs its own alternate stack on the thread that compiles a model (sized for
    AMX state: an AMX-enabled process needs larger signal frames), and unmaps it when its plugin is destroyed — on
    whichever thread drops the last reference, which under Python's garbage collector need not be the compiling
    one. That thread is then left with a stack that no longer exists, and the next signal delivered to it (SIGCHLD
    when a DataLoader worker or a subprocess exits: Python runs every handler with ``SA_ONSTACK``) kills the
    process with SIGSEGV, far from OpenVINO.

    After the block the thread gets its previous state back — none, or its previous stack (faulthandler's) where
    that is at least as large as the one the library installed — or else a stack of the library's size that datvit
    allocates and never frees. A no-op off glibc Linux."""
    libc = _glibc()
    saved = _signal_stack(libc) if libc is not None and hasattr(libc, "sigaltstack") else None
    try:
        yield
    finally:
        current = _signal_stack(libc) if saved is not None else None
        if current is not None and _fields(current) != _fields(saved):
            _replace_signal_stack(libc, saved, current)


def _replace_signal_stack(libc: ctypes.CDLL, saved: _SignalStack, current: _SignalStack) -> None:
    """The thread's stack after ``preserve_signal_stack``'s block: ``saved`` where it was none or is large
    enough for what ``current`` provides, else a process-lifetime buffer of ``current``'s size."""
    if saved.ss_flags & _SS_DISABLE or current.ss_flags & _SS_DISABLE or saved.ss_size >= current.ss_size:
        stack = _SignalStack(saved.ss_sp, saved.ss_flags & _SS_DISABLE, saved.ss_size)
    else:
        buffer = ctypes.create_string_buffer(current.ss_size)
        _kept_stacks.append(buffer)
        stack = _SignalStack(ctypes.addressof(buffer), 0, current.ss_size)
    libc.sigaltstack(ctypes.byref(stack), None)
