"""datvit.tune_cpu_allocator: freed tensor memory is reused instead of being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's malloc"
)

# Allocate, touch and free 256 MB seven times; print whether the tuning is on and the minor page faults of the last
# four (the first ones grow the heap: an aligned request does not fit exactly into the block the first one freed).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from datvit.runtime import tune_cpu_allocator
    tuned = tune_cpu_allocator(sys.argv[1] == "tuned")
    def touch():
        x = torch.empty(64 * 2**20)
        x.fill_(1.0)
        del x
    touch()
    touch()
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        touch()
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(choice: str, env_choice: str | None = None) -> tuple[bool, int]:
    env = dict(os.environ)
    env.pop("DATVIT_CPU_ALLOCATOR", None)
    if env_choice:
        env["DATVIT_CPU_ALLOCATOR"] = env_choice
    out = subprocess.run(
        [sys.executable, "-c", PROBE, choice], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_tuned_allocator_reuses_freed_memory():
    pages = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    tuned, faults = _probe("tuned")
    assert tuned
    # at most one more growth of the heap (its layout differs from run to run), not a fault per page per call
    assert faults < 1.5 * pages, f"{faults} page faults re-allocating 4 × {pages} pages"
    # glibc's default serves the block with a fresh mmap: every page faults again, every time
    default_on, default_faults = _probe("system")
    assert not default_on
    assert default_faults > 3 * pages


def test_environment_switch_turns_it_off():
    tuned, faults = _probe("tuned", env_choice="system")
    assert not tuned
    assert faults > 3 * 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")
