"""Shared pieces of the benchmark: what is measured (subjects), how models and steps are built, timing, FLOP
counting, the matrix-multiply peak and a description of the machine.

Nothing here imports torch at module import time except through the functions, so ``datvit --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

# src/datvit/tools/benchmark/common.py → the repository root when the package runs from a source checkout
_CHECKOUT = Path(__file__).resolve().parents[4]
PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # the directory that holds ``datvit`` (for worker processes)


def source_checkout() -> Optional[Path]:
    """The git checkout this package runs from (editable install), or None for an installed package."""
    return _CHECKOUT if (_CHECKOUT / ".git").exists() and (_CHECKOUT / "src" / "datvit").is_dir() else None


# timm models users would pick instead of DAT, with short labels used in tables and ratios.
ALIASES = {
    "swin": "swin_tiny_patch4_window7_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "convnext": "convnext_tiny",
    "convnext_t": "convnext_tiny",
}
SHORT_NAMES = {"swin_tiny_patch4_window7_224": "swin_t", "convnext_tiny": "convnext_t"}
DAT_PATHS = ("fast", "reference")
# Where the benchmark and its tools write by default (relative to the working directory).
DEFAULT_OUTPUT = "benchmark_results"

# What FlopCounterMode counts (stated in the JSON and the docs).
FLOP_COUNT_NOTE = (
    "datvit.tools.flops.count_flops (the `datvit flops` counter: a trace at batch 1 on the meta device; matrix "
    "multiplies, convolutions, attention, grid_sample, norms in the papers' multiply-add convention), reported "
    "here as FLOPs = 2 × multiply-adds so that GFLOP/s compares with the fp32 matmul peak; a training step counts "
    "3× the forward. For DAT the count of the reference path (the authors' algorithm) is used for both paths, so a "
    "faster path shows as more GFLOP/s; the fast path's own count is given as 'executed' (DAT++'s tiled "
    "neighborhood attention computes extra masked scores). The DeformableAttention module benchmark counts with "
    "FlopCounterMode while running (matmuls, convolutions and their backward)."
)


def as_tuple(value: Any) -> tuple:
    """A sequence as a tuple; a string is a comma-separated list (never its characters), None an empty one."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t for t in value.replace(" ", "").split(",") if t)
    return tuple(value)


def freeze_sequences(config: Any, names: Iterable[str], optional: Iterable[str] = ()) -> None:
    """In a frozen config's ``__post_init__``: the fields ``names`` as tuples (:func:`as_tuple`), those in
    ``optional`` left None when they are."""
    optional = set(optional)
    for name in names:
        value = getattr(config, name)
        if value is not None or name not in optional:
            object.__setattr__(config, name, as_tuple(value))


def resolve_model_name(name: str) -> str:
    return ALIASES.get(name, name)


def is_dat(model: str) -> bool:
    import datvit

    return model in datvit.list_models()


@dataclass(frozen=True)
class Subject:
    """One thing to time: a model and, for DAT models, which implementation ("fast" or "reference")."""

    model: str
    path: str = "timm"  # "fast" | "reference" for DAT models, "timm" otherwise; "onnxruntime": exported model

    @property
    def label(self) -> str:
        base = SHORT_NAMES.get(self.model, self.model)
        return base if self.path == "timm" else f"{base}:{self.path}"

    @property
    def dat(self) -> bool:
        return self.path in DAT_PATHS

    def as_dict(self) -> dict[str, str]:
        return {"model": self.model, "path": self.path, "label": self.label}


def subject_for(model: str, path: str = "fast") -> Subject:
    """``model`` (an alias or timm name) on DAT path ``path``; other models have only timm's."""
    model = resolve_model_name(model)
    return Subject(model, path) if is_dat(model) else Subject(model)


def expand_subjects(models: Iterable[str], paths: Iterable[str] = DAT_PATHS) -> list[Subject]:
    """Every DAT model once per path in ``paths``, every other model once."""
    subjects = []
    for name in map(resolve_model_name, models):
        subjects += [Subject(name, p) for p in paths] if is_dat(name) else [Subject(name)]
    return subjects


def set_threads(threads: Optional[int]) -> int:
    import torch

    if threads is None or threads <= 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def pick_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def build_model(subject: Subject, device, img_size: int = 224, source=None):
    """A randomly initialised model for ``subject``; ``source`` (a DAT model) is copied so that the fast and the
    reference paths are timed with the same weights."""
    import timm

    import datvit  # noqa: F401  (registers the DAT models with timm)

    if subject.dat:
        if source is not None:
            model = copy.deepcopy(source)
        else:
            model = timm.create_model(subject.model, pretrained=False, img_size=img_size)
        model.set_reference(subject.path == "reference")
    else:
        kwargs = {"img_size": img_size} if "swin" in subject.model and img_size != 224 else {}
        model = timm.create_model(subject.model, pretrained=False, **kwargs)
    return model.to(device)


def build_models(subjects: Iterable[Subject], device, img_size: int = 224) -> dict[Subject, Any]:
    """A model per subject; the paths of one DAT model share its weights (copies of the first one built), so
    that their timings and outputs compare the implementations, not the initialisations."""
    models: dict[Subject, Any] = {}
    sources: dict[str, Any] = {}
    for s in subjects:
        models[s] = build_model(s, device, img_size, source=sources.get(s.model))
        if s.dat:
            sources.setdefault(s.model, models[s])
    return models


def autocast_context(device, dtype_name: Optional[str]):
    import torch

    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype_name))


# -- timing -------------------------------------------------------------------------------------------------------


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CpuMonitor:
    """CPU time used by *other* processes (Linux /proc/stat minus this process), in cores, and steal time.

    On a shared machine another busy process can slow a 2-thread OpenMP region many times over (a preempted
    thread stalls the whole region); every measurement records how busy the rest of the machine was.
    """

    def __init__(self) -> None:
        self.enabled = Path("/proc/stat").exists() and Path("/proc/self/stat").exists()
        self.tick = os.sysconf("SC_CLK_TCK") if self.enabled else 100

    def sample(self) -> Optional[tuple[float, int, int, int]]:
        if not self.enabled:
            return None
        try:
            f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq
        steal = f[7] if len(f) > 7 else 0
        return time.monotonic(), busy, int(own[11]) + int(own[12]), steal  # utime + stime of this process

    def others(self, a, b) -> Optional[dict[str, float]]:
        """Cores used by other processes, and stolen by the hypervisor, between samples a and b."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        dt = (b[0] - a[0]) * self.tick
        return {"others": max(((b[1] - a[1]) - (b[2] - a[2])) / dt, 0.0), "steal": (b[3] - a[3]) / dt}

    def wait_quiet(self, budget_s: float, threshold: float = 0.3, window_s: float = 0.2) -> float:
        """Wait (up to ``budget_s``) until other processes use less than ``threshold`` cores; returns seconds
        waited."""
        if budget_s <= 0 or not self.enabled:
            return 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < budget_s:
            a = self.sample()
            time.sleep(window_s)
            o = self.others(a, self.sample())
            if o is None or o["others"] < threshold:
                break
        return time.monotonic() - t0


MONITOR = CpuMonitor()
# Seconds each timed call may wait for the rest of the machine to go quiet (set by --wait-quiet).
QUIET_WAIT_S = 0.0


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    warmup: int,
    iters: int,
    device,
    background: Optional[dict[str, list[float]]] = None,
) -> dict[str, list[float]]:
    """Run every function ``warmup`` times, then ``iters`` rounds in which each function runs once (order reversed
    every other round). Interleaving spreads background load on a shared machine evenly over all subjects, which
    is what makes their ratios trustworthy. Returns seconds per call for each key; ``background`` (if given) gets,
    per key, the cores other processes used during each call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(iters):
            keys = list(fns) if i % 2 == 0 else list(reversed(list(fns)))
            for k in keys:
                MONITOR.wait_quiet(QUIET_WAIT_S)
                synchronize(device)
                a = MONITOR.sample()
                t0 = time.perf_counter()
                fns[k]()
                synchronize(device)
                times[k].append(time.perf_counter() - t0)
                if background is not None:
                    o = MONITOR.others(a, MONITOR.sample())
                    if o is not None:
                        background.setdefault(k, []).append(o["others"] + o["steal"])
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


# A timed call during which other processes used less than this many cores counts as "quiet".
QUIET_CORES = 0.15


def summarize(seconds: list[float], batch: int, background: Optional[list[float]] = None) -> dict[str, Any]:
    """Median (the headline), best and worst call; images/s from the median and from the best call.

    With ``background`` (cores other processes used during each call): its mean, and the median over the *quiet*
    calls (background < QUIET_CORES). When at least 3 calls (and at least half of them) were quiet, the headline
    ``images_per_s`` is the median of the quiet calls — on a shared machine, calls that overlapped with other
    processes' bursts are not what the code costs. ``statistic`` says which median was used."""
    med = statistics.median(seconds)
    out: dict[str, Any] = {
        "ms_median_all": med * 1e3,
        "ms_min": min(seconds) * 1e3,
        "ms_max": max(seconds) * 1e3,
        "iters": len(seconds),
        "images_per_s_all": batch / med,
        "images_per_s_best": batch / min(seconds),
        "statistic": f"median of all {len(seconds)} calls",
    }
    if background and len(background) == len(seconds):
        out["background_cores"] = sum(background) / len(background)
        quiet = [t for t, b in zip(seconds, background) if b < QUIET_CORES]
        out["quiet_calls"] = len(quiet)
        if len(quiet) >= 3 and 2 * len(quiet) >= len(seconds):
            med = statistics.median(quiet)
            out["statistic"] = f"median of {len(quiet)} quiet calls of {len(seconds)}"
    out["ms_median"] = med * 1e3
    out["images_per_s"] = batch / med
    return out


def export_onnx_file(model, img_size: int, directory: str) -> str:
    """Export ``model`` with :func:`datvit.tools.export.export_onnx` (dynamic batch, fp32) into ``directory``."""
    from datvit.tools.export import export_onnx

    return export_onnx(model, os.path.join(directory, "model.onnx"), (3, img_size, img_size))


def onnxruntime_session(path: str):
    """The ONNX file at ``path`` in onnxruntime's CPU provider (default session options: all graph
    optimisations)."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def openvino_compiled(path: str, batch: int, threads: int):
    """The ONNX file at ``path`` compiled by OpenVINO for its CPU plugin at a fixed ``batch`` (reshaped: what a
    deployment does), in float32 (``INFERENCE_PRECISION_HINT=f32``: the plugin runs bf16 by default on CPUs with
    native bf16) on ``threads`` threads."""
    from datvit.tools.export import compile_openvino

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)}
    return compile_openvino(path, config, input_shape=(batch,))


def openvino_fn(compiled, x):
    request = compiled.create_infer_request()
    array = x.detach().cpu().numpy()

    def step():
        request.infer([array])

    return step


def onnxruntime_fn(session, x):
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}

    def step():
        session.run(None, feed)

    return step


def inference_fn(model, x, device, autocast: Optional[str]):
    import torch

    def step():
        with torch.no_grad(), autocast_context(device, autocast):
            model(x)

    return step


def train_fn(model, x, y, device, autocast: Optional[str], lr: float = 1e-4):
    """One training step: zero_grad, forward, cross-entropy, backward, AdamW step (torch's default AdamW
    implementation for the device)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, autocast):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        optimizer.step()

    return step, optimizer


def random_batch(batch: int, img_size: int, device, num_classes: int = 1000, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return x, y


# -- FLOPs ---------------------------------------------------------------------------------------------------------


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape,
) -> int:
    """torch's formula for ``convolution_backward`` with the weight gradient counted like the forward conv.

    torch's own formula computes the weight gradient as conv(inputᵀ, grad_outᵀ) without the groups, which
    overcounts a depthwise conv's weight gradient by its channel count (the offset network's depthwise conv)."""
    from torch.utils.flop_counter import conv_flop_count

    flop = 0
    if output_mask[0]:
        flop += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:
        if transposed:
            flop += conv_flop_count(grad_out_shape, w_shape, x_shape, transposed=True)
        else:
            flop += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=False)
    return flop


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of everything ``fn`` runs (see FLOP_COUNT_NOTE), with the per-op breakdown."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def model_flops(model, img_size: int, device=None, path: str = "reference") -> dict[str, Any]:
    """Forward and training-step FLOPs per image from :func:`datvit.tools.flops.count_flops` (the ``datvit
    flops`` counter: a meta-device trace, the papers' multiply-adds incl. attention and grid_sample), as FLOPs
    (2 per multiply-add, the unit of the matmul peak). A training step counts 3× the forward (backward ≈ 2×
    forward, the usual convention). ``path``: "reference" or "fast" for DAT models (ignored for others)."""
    from datvit.tools.flops import count_flops as count_model_flops

    is_dat = hasattr(model, "set_reference")
    report = count_model_flops(model, (3, img_size, img_size), path=path if is_dat else "reference")
    forward = 2 * report.macs
    return {
        "forward_gflop": forward / 1e9,
        "train_gflop": 3 * forward / 1e9,
        "forward_by_op_gflop": {k: 2 * v / 1e9 for k, v in report.by_op().items()},
        "params_m": report.params / 1e6,
    }


# -- matmul peak ---------------------------------------------------------------------------------------------------


def matmul_peak(sizes: Iterable[int], device, iters: int = 5, dtype_name: str = "float32") -> dict[str, Any]:
    """GFLOP/s of torch.mm on n×n matrices, and on CPU in float32 also of ``datvit.layers.ops.dense`` (oneDNN; on
    the EPYC machines MKL's sgemm behind torch.mm reaches about half of what oneDNN does). The peak is the best single
    call over all sizes and both: background load on a shared machine only ever lowers a call's speed, so the best
    call is the closest to the machine's capability. Smaller sizes get proportionally more calls (``iters`` ×
    (largest/n)³, at most 40) so each size gets a similar time budget and more chances to land in a quiet moment."""
    import torch

    from datvit.layers.ops import dense

    dtype = getattr(torch, dtype_name)
    sizes = list(sizes)
    largest = max(sizes)
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        calls = min(40, max(iters, round(iters * (largest / n) ** 3)))
        fns = {"mm": lambda a=a, b=b: torch.mm(a, b)}
        if torch.device(device).type == "cpu" and dtype == torch.float32:
            fns["onednn"] = lambda a=a, b=b: dense(a, b)
        bg: dict[str, list[float]] = {}
        times = time_interleaved(fns, warmup=2, iters=calls, device=device, background=bg)
        flop = 2.0 * n**3
        per_size[str(n)] = {
            "gflops_best": flop / min(times["mm"]) / 1e9,
            "gflops_median": flop / statistics.median(times["mm"]) / 1e9,
            "calls": calls,
        }
        if "onednn" in times:
            per_size[str(n)]["gflops_best_onednn"] = flop / min(times["onednn"]) / 1e9
        if bg.get("mm"):
            per_size[str(n)]["background_cores"] = sum(bg["mm"]) / len(bg["mm"])
        del a, b, fns
    peak_mm = max(v["gflops_best"] for v in per_size.values())
    peak = max([peak_mm] + [v["gflops_best_onednn"] for v in per_size.values() if "gflops_best_onednn" in v])
    return {
        "dtype": dtype_name,
        "sizes": per_size,
        "peak_gflops": peak,
        "peak_gflops_mm": peak_mm,
        "how": "torch.mm n×n (and on CPU fp32 datvit's oneDNN dense) after 2 warm-up calls, iters × "
        "(largest/n)³ timed calls per size (≤ 40); peak = the best call",
    }


def bf16_probe(device) -> dict[str, float]:
    """Speed of a small bf16 matmul relative to fp32 (bf16 is emulated and ~400× slower on CPUs without native
    support; this costs at most ~0.1 s there)."""
    import torch

    out = {}
    n = 256
    for name in ("float32", "bfloat16"):
        a = torch.randn(n, n, device=device, dtype=getattr(torch, name))
        b = torch.randn(n, n, device=device, dtype=getattr(torch, name))
        t = time_interleaved({"mm": lambda: torch.mm(a, b)}, warmup=1, iters=3, device=device)["mm"]
        out[name] = 2.0 * n**3 / min(t) / 1e9
    out["bf16_over_fp32"] = out["bfloat16"] / out["float32"]
    return out


# -- machine -------------------------------------------------------------------------------------------------------


def _cpu_model() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or "unknown"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    info["model"] = fields.get("model name", info["model"])
    info["vendor"] = fields.get("vendor_id")
    info["family"] = fields.get("cpu family")
    info["model_number"] = fields.get("model")
    flags = set(fields.get("flags", "").split())
    info["flags"] = sorted(
        flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx512_fp16"}
    )
    return info


def _git_commit() -> dict[str, Any]:
    root = source_checkout()
    if root is None:
        return {"commit": None, "installed_package": True}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return {"commit": commit or None, "src_modified": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def apply_allocator(choice: str) -> bool:
    """Set the allocator of this process and of the worker processes it starts (they read the environment)."""
    from datvit.runtime import tune_cpu_allocator

    os.environ["DATVIT_CPU_ALLOCATOR"] = choice
    return tune_cpu_allocator(choice == "tuned")


def machine_info(device, threads: int) -> dict[str, Any]:
    import numpy
    import timm
    import torch

    import datvit
    from datvit.runtime import cpu_allocator_tuned

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "datvit": datvit.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "cpu_allocator": "tuned (datvit.tune_cpu_allocator)" if cpu_allocator_tuned() else "system default",
        "git": _git_commit(),
        "datvit_source": str(Path(datvit.__file__).resolve().parent),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        info["memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "memory_gb": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


# -- memory --------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), 0 where unavailable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def virtual_size_bytes() -> int:
    kb = _status_kb("VmSize")
    return 0 if kb is None else kb * 1024


def current_rss_bytes() -> int:
    """Resident set size now (Linux), 0 where unavailable."""
    kb = _status_kb("VmRSS")
    return 0 if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set (VmHWM, resettable) or, without /proc, getrusage's ru_maxrss (which Linux carries over
    from the parent process across fork/exec, so it is only a fallback)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)
