"""datvit.runtime: freed tensor memory is reused instead of being faulted in again (``tune_cpu_allocator``), and a
thread keeps its alternate signal stack across native code that replaces it (``preserve_signal_stack``)."""

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


def test_signal_stack_is_given_back_after_the_block():
    """A library that installs its own alternate signal stack inside the block (here: ctypes, as OpenVINO does)
    leaves the thread on its previous state afterwards — a stack at least as large (the main thread: faulthandler's,
    under pytest) or none (a new thread) — and a thread whose previous stack was smaller than the library's on a
    stack of the library's size that is neither of the two (kept by datvit, never freed)."""
    import ctypes
    import threading

    from datvit.runtime import _glibc, _signal_stack, _SignalStack, preserve_signal_stack

    libc = _glibc()
    library = ctypes.create_string_buffer(12 * 1024)
    small = ctypes.create_string_buffer(8 * 1024)

    def state():
        s = _signal_stack(libc)
        return s.ss_sp, s.ss_size, s.ss_flags

    def block(before=None):
        if before is not None:
            libc.sigaltstack(ctypes.byref(_SignalStack(ctypes.addressof(before), 0, len(before))), None)
        seen = [state()]
        with preserve_signal_stack():
            libc.sigaltstack(ctypes.byref(_SignalStack(ctypes.addressof(library), 0, len(library))), None)
            assert state()[0] == ctypes.addressof(library)
        seen.append(state())
        libc.sigaltstack(ctypes.byref(_SignalStack(None, 2, 0)), None)  # this thread: none again
        results.append(seen)

    results = []
    main_before = state()
    assert main_before[1] >= len(library)  # faulthandler's, under pytest
    with preserve_signal_stack():  # the main thread keeps its own: only the block runs on it here
        block()
    for before in (None, small):
        worker = threading.Thread(target=block, args=(before,))
        worker.start()
        worker.join()
    main, fresh, smaller = results
    assert main[1] == main[0] == main_before
    assert fresh[0][2] & 2 and fresh[1] == fresh[0]  # none, then none
    assert smaller[0][:2] == (ctypes.addressof(small), len(small))
    assert smaller[1][1] == len(library) and smaller[1][0] not in (ctypes.addressof(small), ctypes.addressof(library))
    assert state() == main_before


# Compile an ONNX file in OpenVINO on the main thread, drop the compiled model on another thread (as the garbage
# collector may), then take a signal on the main thread with a Python handler (as SIGCHLD from a DataLoader worker
# arrives). OpenVINO 2026.4 unmaps the stack it installed on the compiling thread: unguarded, the signal killed
# the process with SIGSEGV.
OPENVINO_PROBE = textwrap.dedent("""
    import gc, os, signal, sys, threading
    import onnx
    from onnx import TensorProto, helper
    from datvit.tools.export import compile_openvino
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
    held = [compile_openvino(sys.argv[1], {"INFERENCE_PRECISION_HINT": "f32"})]
    def drop():
        held.clear()
        gc.collect()
    worker = threading.Thread(target=drop)
    worker.start()
    worker.join()
    signal.signal(signal.SIGUSR1, lambda *args: print("handled"))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("alive")
""")


def test_openvino_compiled_model_freed_on_another_thread_does_not_crash_the_process(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", OPENVINO_PROBE, str(tmp_path / "relu.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["handled", "alive"]
