"""Measurements that need a process of their own, run by :mod:`datvit.tools.benchmark.run` as
``python -m datvit.tools.benchmark.worker TASK`` with TASK a JSON object; the result is printed as one line
``BENCH_RESULT {json}``.

* ``train_interleaved`` — training steps of several subjects in one fresh process, interleaved (see
  :func:`train_interleaved`).
* ``memory`` — the peak memory of training steps of one model. On CPU the fresh process matters: no other model's
  freed memory sits in the allocator, and the kernel's peak-RSS mark (VmHWM) is reset just before the first step
  and read after the last; the result is the peak minus the resident set before the first step. (getrusage's
  ru_maxrss is not used: Linux carries it over from the parent across fork/exec.) On CUDA
  ``max_memory_allocated``. The address space is capped (``memory_fraction`` of the available memory) so a run too
  big for the machine ends with ``out_of_memory`` rather than the kernel's OOM killer.
* ``compile`` — ``torch.compile`` (inductor; for inference by default with freezing, through
  ``datvit.optimize_for_inference``) of one model for inference or a training step: the first
  call (which compiles) is timed, then the compiled and the eager model are timed interleaved in the same process.
  A fresh inductor cache directory is used, so the compile time is a cold compile. The parent enforces a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from . import common

RESULT_PREFIX = "BENCH_RESULT "


def _setup(task: dict[str, Any]):
    """Threads and quiet-wait of this process; the device."""
    common.set_threads(task.get("threads"))
    common.QUIET_WAIT_S = float(task.get("wait_quiet", 0.0))
    return common.pick_device(task.get("device", "cpu"))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "memory" in str(exc).lower()


def _limit_memory(task: dict[str, Any]) -> Optional[float]:
    """Cap the address space so that a run too big for the machine fails with a clean allocation error instead of
    being killed by the kernel's OOM killer (which can also hit other processes). Returns the cap in GB."""
    frac = float(task.get("memory_fraction", 0.0))
    if frac <= 0:
        return None
    try:
        import resource

        available = common.available_memory_bytes()
        size = common.virtual_size_bytes()
        if not available or not size:
            return None
        cap = size + int(frac * available)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        return frac * available / 2**30
    except (ImportError, ValueError, OSError):
        return None


def memory(task: dict[str, Any]) -> dict[str, Any]:
    """The peak memory over ``warmup`` + ``iters`` training steps of one model in this fresh process (the first
    step creates AdamW's state, so the warm-up steps count)."""
    import gc

    import torch

    device = _setup(task)
    batch, warmup, iters = int(task["batch"]), int(task.get("warmup", 1)), int(task.get("iters", 1))
    img = task.get("img_size", 224)
    model = common.build_model(common.Subject(task["model"], task["path"]), device, img).train()
    x, y = common.random_batch(batch, img, device)
    step, _ = common.train_fn(model, x, y, device, task.get("autocast"))
    gc.collect()
    out: dict[str, Any] = {"warmup_steps": warmup}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        out["memory_cap_gb"] = _limit_memory(task)
        base = common.current_rss_bytes()
        out["peak_reset"] = common.reset_peak_rss()
    out["warmup_step_s"] = []
    try:
        for i in range(warmup + iters):
            seconds = _seconds(step, device)
            if i < warmup:
                out["warmup_step_s"].append(seconds)
    except (RuntimeError, MemoryError) as exc:
        if not _is_oom(exc):
            raise
        return {
            "status": "out_of_memory",
            "error": str(exc)[:500],
            "memory_cap_gb": out.get("memory_cap_gb"),
            "completed_steps": i,
        }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["memory_method"] = "torch.cuda.max_memory_allocated − memory_allocated before the first step"
    else:
        peak = common.peak_rss_bytes()
        out["rss_after_mb"] = common.current_rss_bytes() / 2**20
        out["memory_method"] = (
            "peak resident set during the steps (VmHWM, reset just before the first step) − "
            "resident set just before the first step, in a fresh process"
        )
        if not out["peak_reset"]:
            out["warning"] = "could not reset the peak-RSS mark; the value may include earlier peaks"
    out["baseline_mb"] = base / 2**20
    out["peak_extra_mb"] = (peak - base) / 2**20
    return out


def _seconds(fn, device) -> float:
    t0 = time.perf_counter()
    fn()
    common.synchronize(device)
    return time.perf_counter() - t0


def compile_task(task: dict[str, Any]) -> dict[str, Any]:
    """Compile time (the first call less a compiled call's median) and compiled against eager speed."""
    import torch

    device = _setup(task)
    batch, kind = int(task["batch"]), task["kind"]
    img = task.get("img_size", 224)
    autocast = task.get("autocast")
    model = common.build_model(common.Subject(task["model"], task["path"]), device, img)
    x, y = common.random_batch(batch, img, device)
    mode = task.get("compile_mode") or "default"
    if kind == "inference" and task.get("freezing", True):
        from datvit.deploy import optimize_for_inference

        # what a deployment runs: inductor freezing (constant weights, pre-packed GEMMs) under no_grad
        compiled = optimize_for_inference(model, mode=mode)
    else:
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
    if kind == "inference":
        model.eval()
        eager = common.inference_fn(model, x, device, autocast)
        fast = common.inference_fn(compiled, x, device, autocast)
    else:
        model.train()
        eager, optimizer = common.train_fn(model, x, y, device, autocast)
        # the compiled module shares the parameters, so one optimizer serves both
        import torch.nn.functional as F

        def fast():
            optimizer.zero_grad(set_to_none=True)
            with common.autocast_context(device, autocast):
                out = compiled(x)
            F.cross_entropy(out.float(), y).backward()
            optimizer.step()

    first, second = _seconds(fast, device), _seconds(fast, device)
    bg: dict[str, list[float]] = {}
    times = common.time_interleaved(
        {"eager": eager, "compiled": fast},
        warmup=int(task.get("warmup", 1)),
        iters=int(task.get("iters", 3)),
        device=device,
        background=bg,
    )
    comp = common.summarize(times["compiled"], batch, bg.get("compiled"))
    eag = common.summarize(times["eager"], batch, bg.get("eager"))
    return {
        "first_call_s": first,
        "second_call_s": second,
        "compile_s": max(first - comp["ms_median"] / 1e3, 0.0),
        "compiled": comp,
        "eager_same_process": eag,
        "speedup_vs_eager": comp["images_per_s"] / eag["images_per_s"],
    }


def train_interleaved(task: dict[str, Any]) -> dict[str, Any]:
    """Training steps of several subjects in this one process, interleaved: ``warmup`` untimed rounds, then
    ``iters`` rounds in which every subject takes one step (order reversed every other round), so background load
    falls on all of them alike and their ratios can be trusted on a shared machine. Activations are freed after
    each backward, so the process holds every model's weights, gradients and AdamW state but only one step's
    activations at a time. A subject that runs out of memory is dropped from later rounds (``out_of_memory``)."""
    import gc

    device = _setup(task)
    _limit_memory(task)
    batch, warmup, iters = int(task["batch"]), int(task.get("warmup", 1)), int(task.get("iters", 3))
    img = task.get("img_size", 224)
    x, y = common.random_batch(batch, img, device)
    models = common.build_models([common.Subject(m, p) for m, p in task["subjects"]], device, img)
    steps = {s.label: common.train_fn(m.train(), x, y, device, task.get("autocast"))[0] for s, m in models.items()}
    del models
    status = {k: "ok" for k in steps}
    times: dict[str, list[float]] = {k: [] for k in steps}
    background: dict[str, list[float]] = {k: [] for k in steps}
    rounds: list[dict[str, float]] = []
    for i in range(warmup + iters):
        order = [k for k in (steps if i % 2 == 0 else reversed(list(steps))) if status[k] == "ok"]
        this_round: dict[str, float] = {}
        for k in order:
            gc.collect()
            if i >= warmup:
                common.MONITOR.wait_quiet(common.QUIET_WAIT_S)
            a = common.MONITOR.sample()
            t0 = time.perf_counter()
            try:
                steps[k]()
                common.synchronize(device)
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                status[k] = "out_of_memory"
                continue
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[k].append(dt)
                this_round[k] = dt
                o = common.MONITOR.others(a, common.MONITOR.sample())
                if o is not None:
                    background[k].append(o["others"] + o["steal"])
        if i >= warmup:
            rounds.append(this_round)
    timing = {
        k: common.summarize(v, batch, background[k] if len(background[k]) == len(v) else None)
        for k, v in times.items()
        if v and status[k] == "ok"
    }
    return {"batch": batch, "timing": timing, "rounds": rounds, "subject_status": status}


TASKS = {"memory": memory, "compile": compile_task, "train_interleaved": train_interleaved}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(argv[0])
    common.apply_allocator(os.environ.get("DATVIT_CPU_ALLOCATOR") or "tuned")  # the parent's choice
    result = TASKS[task["task"]](task)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_in_subprocess(
    task: dict[str, Any], timeout: float | None = None, env_overrides: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """Run ``task`` in a fresh Python process (this interpreter); returns its result (``status`` "ok" unless the
    task set another, e.g. "out_of_memory"), or a dict with ``status`` "timeout"/"error" and the tail of its
    output."""
    env = dict(os.environ, **(env_overrides or {}))
    # the child imports the same datvit as this process, wherever it is installed
    env["PYTHONPATH"] = os.pathsep.join([str(common.PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
    cache = tempfile.mkdtemp(prefix="datvit-bench-inductor-")
    env["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold compile every time
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "datvit.tools.benchmark.worker", json.dumps(task)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and the compile workers it started
        except ProcessLookupError:
            pass
        output, _ = proc.communicate()
        return {
            "status": "timeout",
            "timeout_s": timeout,
            "wall_s": time.perf_counter() - t0,
            "output_tail": (output or "")[-2000:],
        }
    finally:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - t0
    for line in reversed((output or "").splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result.setdefault("status", "ok")
            result["wall_s"] = wall
            return result
    return {"status": "error", "returncode": proc.returncode, "wall_s": wall, "output_tail": (output or "")[-2000:]}


if __name__ == "__main__":
    sys.exit(main())
