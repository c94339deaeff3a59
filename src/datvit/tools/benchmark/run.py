"""The datvit benchmark: ``datvit bench`` (and ``python -m benchmarks.run`` in a source checkout; same options).

In one process and one run it measures, side by side, datvit's fast path, datvit's reference path (the authors'
algorithm) and timm's Swin-T and ConvNeXt-T:

* inference images/s (eval, no_grad) at each ``--batch-sizes``, all subjects in this process, timed *interleaved*
  (one call of each per round, so background load on a shared machine hits all of them alike); medians;
* training-step images/s (forward, cross-entropy, backward, AdamW step) at each ``--train-batch-sizes``, all
  subjects stepping interleaved in one fresh process, repeated in ``--train-runs`` processes for the spread of the
  ratios; and the peak memory of a step, each subject in a fresh process of its own (peak RSS growth on CPU,
  max_memory_allocated on CUDA);
* ``torch.compile`` (compile time and compiled speed, in a fresh process with a timeout);
* the DeformableAttention module alone at dat_tiny's stage-3 shapes, fast vs reference, forward and
  forward+backward;
* FLOPs (FlopCounterMode) and achieved GFLOP/s against the fp32 matmul peak measured on the spot.

It prints markdown tables and writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` into ``--out``.
See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from . import common, report as rep

DEFAULT_MODELS = "dat_tiny,datpp_tiny,swin_tiny_patch4_window7_224,convnext_tiny"
IN_PROCESS_MODES = ("eager", "bf16")
ALL_MODES = ("eager", "compile", "bf16", "bf16-compile")
# dat_tiny stage 3 at 224: 14×14 map, 384 channels, 12 heads, 3 offset groups, offset kernel 5, stride 1.
MODULE_CONFIG = dict(dim=384, heads=12, groups=3, fmap_size=14, stride=1, ksize=5, offset_range_factor=2,
                     use_pe=True, generation="v1")


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.replace(" ", "").split(",") if t and int(t) > 0]


def _str_list(text: str) -> list[str]:
    return [t for t in text.replace(" ", "").split(",") if t]


DEFAULT_OUT = "benchmark_results"


def add_arguments(p: argparse.ArgumentParser, default_out: str = DEFAULT_OUT) -> None:
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated timm names; DAT models get one entry per --paths; aliases swin, convnext "
                        f"(default {DEFAULT_MODELS})")
    p.add_argument("--paths", default="fast,reference", help="DAT implementations to time (default fast,reference)")
    p.add_argument("--batch-sizes", default="1,32", help="inference batch sizes (default 1,32)")
    p.add_argument("--train-batch-sizes", default="32", help="training-step batch sizes; '' or 0 for none "
                                                             "(default 32)")
    p.add_argument("--modes", default=None,
                   help="comma-separated from eager (fp32), compile (fp32 torch.compile), bf16 (autocast), "
                        "bf16-compile; default eager,compile on CPU and eager,bf16,compile on CUDA")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it can take many minutes on CPU)")
    p.add_argument("--compile-models", default="dat_tiny",
                   help="models to torch.compile (fast path for DAT; default dat_tiny; e.g. "
                        "dat_tiny,datpp_tiny,swin,convnext for all under the same treatment)")
    p.add_argument("--compile-kinds", default="inference,train", help="default inference,train")
    p.add_argument("--compile-batch-sizes", default=None,
                   help="batch sizes for compile runs (default: the largest inference and training batch)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, max-autotune, ... (default: default)")
    p.add_argument("--no-freezing", action="store_true",
                   help="compile inference without inductor freezing (default: with it, as "
                        "datvit.optimize_for_inference deploys)")
    p.add_argument("--compile-timeout", type=float, default=900.0,
                   help="seconds per compile measurement before it is abandoned (default 900)")
    p.add_argument("--iters", type=int, default=5,
                   help="timed iterations per measurement (×4 for batches below 8; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up iterations per measurement (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="a fast look: batches 1,8, training at 8, 2 iterations, no compile, one matmul size")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i] (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPU count)")
    p.add_argument("--img-size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--train-iters", type=int, default=None,
                   help="timed training steps per model (default: --iters); one or more untimed steps come first")
    p.add_argument("--train-runs", type=int, default=3,
                   help="fresh processes in which all training subjects step interleaved (one step each per round); "
                        "the ratios between subjects are reported per run and as median and spread (default 3)")
    p.add_argument("--no-train-memory", action="store_true",
                   help="skip the per-subject processes that measure the peak memory of a training step")
    p.add_argument("--train-timeout", type=float, default=3600.0,
                   help="seconds per training process before it is abandoned (default 3600)")
    p.add_argument("--memory-fraction", type=float, default=0.85,
                   help="cap each training process's memory at this fraction of the memory available when it "
                        "starts, so that a model too big for the machine fails cleanly (default 0.85; 0: no cap)")
    p.add_argument("--onnx-models", default="dat_tiny,swin",
                   help="models also timed in onnxruntime (CPU, fp32, exported with datvit.tools.export.export_onnx) "
                        "next to PyTorch eager inference; '' for none (default dat_tiny,swin)")
    p.add_argument("--no-module", action="store_true", help="skip the DeformableAttention module benchmark")
    p.add_argument("--module-batch", type=int, default=8, help="batch of the module benchmark (default 8)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting (then no GFLOP/s)")
    p.add_argument("--matmul-sizes", default="2048,3072,4096", help="square sizes for the matmul peak")
    p.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
    p.add_argument("--no-chart", action="store_true", help="do not write the PNG")
    p.add_argument("--skip", default="",
                   help="comma-separated measurements to leave out, as LABEL:KIND with KIND inference or train and "
                        "LABEL as in the tables (dat_tiny:reference, swin_t, ...), e.g. datpp_tiny:reference:train "
                        "(DAT++'s reference neighborhood attention needs ~16 GB to train at batch 32)")
    p.add_argument("--note", action="append", default=[],
                   help="free text stored in the report's notes (repeatable), e.g. what code was measured")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="seconds each timed call may wait for other processes to go quiet (< 0.3 cores busy) on a "
                        "shared machine (default 0: do not wait; background load is recorded either way)")
    common.add_allocator_argument(p)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _iters_for(batch: int, iters: int) -> int:
    return iters if batch >= 8 else 4 * iters


def _resolve(args: argparse.Namespace, device) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    cfg["models"] = [common.resolve_model_name(m) for m in _str_list(args.models)]
    import timm

    import datvit  # noqa: F401  (registers the DAT variants with timm)
    unknown = [m for m in cfg["models"] if not timm.is_model(m)]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown)} (DAT variants: `datvit models`; or any timm model name)")
    cfg["paths"] = _str_list(args.paths)
    bad = [p for p in cfg["paths"] if p not in common.DAT_PATHS]
    if bad:
        raise ValueError(f"unknown --paths {bad}; choose from {common.DAT_PATHS}")
    cfg["batch_sizes"] = _int_list(args.batch_sizes)
    cfg["train_batch_sizes"] = _int_list(args.train_batch_sizes or "")
    if args.modes:
        modes = _str_list(args.modes)
    else:
        modes = ["eager", "bf16", "compile"] if device.type == "cuda" else ["eager", "compile"]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        raise ValueError(f"unknown --modes {bad}; choose from {ALL_MODES}")
    cfg["iters"], cfg["warmup"] = args.iters, args.warmup
    cfg["matmul_sizes"] = _int_list(args.matmul_sizes)
    if args.quick:
        cfg["batch_sizes"] = [1, 8] if not args.batch_sizes or args.batch_sizes == "1,32" else cfg["batch_sizes"]
        cfg["train_batch_sizes"] = [8] if args.train_batch_sizes == "32" else cfg["train_batch_sizes"]
        cfg["iters"], cfg["warmup"] = min(args.iters, 2), min(args.warmup, 1)
        cfg["matmul_sizes"] = cfg["matmul_sizes"][:1]
        modes = [m for m in modes if "compile" not in m]
    if args.no_compile:
        modes = [m for m in modes if "compile" not in m]
    cfg["modes"] = modes
    cfg["compile_models"] = [common.resolve_model_name(m) for m in _str_list(args.compile_models)]
    cfg["compile_kinds"] = _str_list(args.compile_kinds)
    if args.compile_batch_sizes:
        cfg["compile_batch_sizes"] = _int_list(args.compile_batch_sizes)
    else:
        cfg["compile_batch_sizes"] = None   # largest inference / training batch
    cfg["compile_timeout_s"] = args.compile_timeout
    cfg["compile_mode"] = args.compile_mode
    cfg["freezing"] = not args.no_freezing
    cfg["img_size"] = args.img_size
    cfg["skip"] = _str_list(args.skip)
    for item in cfg["skip"]:
        if item.rsplit(":", 1)[-1] not in ("inference", "train"):
            raise ValueError(f"--skip {item!r}: expected LABEL:inference or LABEL:train")
    cfg["train_iters"] = args.train_iters or cfg["iters"]
    cfg["train_timeout_s"] = args.train_timeout
    cfg["train_runs"] = 1 if args.quick else max(1, args.train_runs)
    cfg["train_memory"] = not args.no_train_memory
    cfg["memory_fraction"] = args.memory_fraction
    cfg["onnx_models"] = [common.resolve_model_name(m) for m in _str_list(args.onnx_models or "")]
    cfg["module"] = not args.no_module
    cfg["module_batch"] = args.module_batch
    cfg["flops"] = not args.no_flops
    cfg["wait_quiet_s"] = args.wait_quiet
    return cfg


def _skipped(cfg: dict, subject: common.Subject, kind: str) -> bool:
    return f"{subject.label}:{kind}" in cfg["skip"]


def _save_partial(report: dict, out_dir: Path) -> None:
    """Write what has been measured so far (a long run that dies keeps its results)."""
    try:
        (out_dir / "benchmark.partial.json").write_text(json.dumps(report, indent=1, default=str))
    except OSError:
        pass


def _autocast_for(mode: str) -> Optional[str]:
    return "bfloat16" if mode.startswith("bf16") else None


def _attach_flops(row: dict, flops: dict, peaks: dict) -> None:
    f = flops.get(row["model"])
    if not f:
        return
    per_image = f["forward_gflop"] if row["kind"] == "inference" else f["train_gflop"]
    row["gflop_per_image"] = per_image
    row["gflops"] = per_image * row["images_per_s"]
    peak = peaks.get(_autocast_for(row["mode"]) or "float32")
    if peak:
        row["fraction_of_peak"] = row["gflops"] / peak


def module_case(batch: int, device):
    """The benchmarked DeformableAttention (seeded) and one input, channels-last and in the authors' layout."""
    import torch

    from datvit.layers import DeformableAttention

    torch.manual_seed(0)
    m = DeformableAttention(**MODULE_CONFIG).to(device)
    # Non-zero offsets (the model zero-initialises the last offset conv; a trained model has offsets).
    torch.nn.init.normal_(m.conv_offset[3].weight, std=0.05)
    H, C = MODULE_CONFIG["fmap_size"], MODULE_CONFIG["dim"]
    x_cl = torch.randn(batch, H, H, C, device=device)
    return m, x_cl, x_cl.permute(0, 3, 1, 2).contiguous()


def module_benchmark(device, batch: int, warmup: int, iters: int, autocast: Optional[str] = None,
                     with_flops: bool = True) -> dict[str, Any]:
    """DeformableAttention alone at dat_tiny stage-3 shapes: fast (B×H×W×C) vs reference (B×C×H×W)."""
    import torch

    m, x_cl, x_ref = module_case(batch, device)
    C, H = MODULE_CONFIG["dim"], MODULE_CONFIG["fmap_size"]
    g_cl = torch.randn(batch, H, H, C, device=device)
    g_ref = g_cl.permute(0, 3, 1, 2).contiguous()
    ctx = lambda: common.autocast_context(device, autocast)  # noqa: E731

    def fwd(fast: bool):
        def step():
            with torch.no_grad(), ctx():
                m(x_cl) if fast else m.reference_forward(x_ref)
        return step

    xg_cl = x_cl.clone().requires_grad_(True)
    xg_ref = x_ref.clone().requires_grad_(True)

    def fwd_bwd(fast: bool):
        def step():
            m.zero_grad(set_to_none=True)
            xg_cl.grad = xg_ref.grad = None
            with ctx():
                out = m(xg_cl) if fast else m.reference_forward(xg_ref)
            out.backward(g_cl.to(out.dtype) if fast else g_ref.to(out.dtype))
        return step

    with torch.no_grad():
        diff = (m(x_cl) - m.reference_forward(x_ref).permute(0, 2, 3, 1)).abs().max().item()
    m.eval()
    bg: dict[str, list[float]] = {}
    t_fwd = common.time_interleaved({"fast/forward": fwd(True), "reference/forward": fwd(False)}, warmup, iters,
                                    device, bg)
    m.train()
    t_bwd = common.time_interleaved({"fast/forward_backward": fwd_bwd(True),
                                     "reference/forward_backward": fwd_bwd(False)}, warmup, iters, device, bg)
    timings = {k: common.summarize(v, batch, bg.get(k)) for k, v in {**t_fwd, **t_bwd}.items()}
    out: dict[str, Any] = {"config": dict(MODULE_CONFIG, batch=batch), "autocast": autocast,
                           "shape": f"B={batch}, C={C}, {H}×{H}, heads {MODULE_CONFIG['heads']}, groups "
                                    f"{MODULE_CONFIG['groups']}", "timings": timings,
                           "fast_vs_reference_max_abs_diff": diff}
    if with_flops:
        def f_fwd():
            with torch.no_grad():
                m.reference_forward(x_ref)

        def f_bwd():
            m.reference_forward(xg_ref).backward(g_ref)
        fwd_flop, _ = common.count_flops(f_fwd)
        bwd_flop, _ = common.count_flops(f_bwd)
        m.zero_grad(set_to_none=True)
        out["gflop"] = {"forward": fwd_flop / 1e9, "forward_backward": bwd_flop / 1e9}
        for k, t in timings.items():
            t["gflops"] = out["gflop"][k.split("/")[1]] / (t["ms_median"] / 1e3)
    return out


def _onnxruntime_subjects(cfg: dict, subjects: list, models: dict, x, fns: dict, sessions: dict,
                          report: dict) -> list:
    """ONNX Runtime (CPU, fp32) subjects for ``--onnx-models``, added to ``fns``: each model exported once (for a
    DAT model its fast-path module with the same weights) and kept in ``sessions``; a failure becomes a note."""
    import tempfile

    added = []
    for name in cfg["onnx_models"]:
        source = next((s for s in subjects if s.model == name and s.path in ("fast", "timm")), None)
        if source is None:
            continue
        subject = common.Subject(name, "onnxruntime")
        if subject.label in sessions and sessions[subject.label] is None:   # its export failed before
            continue
        try:
            if subject.label not in sessions:
                _log(f"exporting {name} to ONNX for onnxruntime")
                sessions[subject.label] = common.onnxruntime_session(models[source], cfg["img_size"],
                                                                     tempfile.mkdtemp(prefix="datvit-bench-onnx-"))
            fns[subject.label] = common.onnxruntime_fn(sessions[subject.label], x)
            added.append(subject)
        except Exception as exc:  # noqa: BLE001 (an exporter or runtime failure must not end the benchmark)
            sessions[subject.label] = None
            report["notes"].append(f"onnxruntime row of {name} skipped: {str(exc).strip().splitlines()[0][:300]}")
    return added


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    common.apply_allocator(args.allocator)
    device = common.pick_device(args.device)
    threads = common.set_threads(args.threads)
    cfg = _resolve(args, device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = getattr(args, "command_line", None) or "datvit bench " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    report: dict[str, Any] = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": cfg,
        "machine": common.machine_info(device, threads),
        "notes": list(getattr(args, "note", None) or []),
    }
    common.QUIET_WAIT_S = cfg["wait_quiet_s"]
    _log(f"device {device}, {threads} threads, modes {cfg['modes']}")

    # bf16 is emulated (hundreds of times slower) on CPUs without native support: check before using it.
    if any(m.startswith("bf16") for m in cfg["modes"]):
        probe = common.bf16_probe(device)
        report["bf16_probe"] = probe
        if device.type == "cpu" and probe["bf16_over_fp32"] < 0.5:
            report["notes"].append(f"bf16 modes skipped: bf16 matmul runs at {probe['bf16_over_fp32']:.3f}× fp32 "
                                   "on this CPU (no native bf16)")
            cfg["modes"] = [m for m in cfg["modes"] if not m.startswith("bf16")]

    # --- matmul peak
    _log(f"matmul peak at {cfg['matmul_sizes']}")
    peaks: dict[str, float] = {}
    report["matmul_peak"] = common.matmul_peak(cfg["matmul_sizes"], device, iters=max(3, min(cfg["iters"], 5)))
    peaks["float32"] = report["matmul_peak"]["peak_gflops"]
    if any(m.startswith("bf16") for m in cfg["modes"]):
        report["matmul_peak_bf16"] = common.matmul_peak(cfg["matmul_sizes"], device, iters=3, dtype_name="bfloat16")
        peaks["bfloat16"] = report["matmul_peak_bf16"]["peak_gflops"]
    _log(f"fp32 matmul peak {peaks['float32']:.1f} GFLOP/s")

    # --- models
    subjects = common.expand_subjects(cfg["models"], cfg["paths"])
    models: dict[common.Subject, Any] = {}
    sources: dict[str, Any] = {}
    for s in subjects:
        models[s] = common.build_model(s, device, cfg["img_size"], source=sources.get(s.model))
        if s.dat:
            sources.setdefault(s.model, models[s])
    report["subjects"] = [dict(s.as_dict(), params_m=sum(p.numel() for p in models[s].parameters()) / 1e6)
                          for s in subjects]

    # --- FLOPs
    flops: dict[str, dict] = {}
    if cfg["flops"]:
        for name in dict.fromkeys(s.model for s in subjects):
            _log(f"counting FLOPs of {name}")
            if common.is_dat(name):
                base = sources.get(name) or common.build_model(common.Subject(name, "fast"), device, cfg["img_size"])
                flops[name] = common.model_flops(base, cfg["img_size"], path="reference")
                executed = common.model_flops(base, cfg["img_size"], path="fast")
                flops[name]["executed_fast_forward_gflop"] = executed["forward_gflop"]
                flops[name]["executed_fast_train_gflop"] = executed["train_gflop"]
            else:
                flops[name] = common.model_flops(models[common.Subject(name)], cfg["img_size"])
        report["flops"] = flops
        report["flops_note"] = common.FLOP_COUNT_NOTE
        if "dat_tiny" in flops:
            report["notes"].append(f"dat_tiny counted {flops['dat_tiny']['forward_gflop']:.3f} GFLOP/image "
                                   "(published: 4.59 GMAC = 9.18 GFLOP)")

    # --- consistency: the fast and reference paths must agree
    consistency = {}
    for name, src in sources.items():
        x, _ = common.random_batch(1, cfg["img_size"], device, seed=1)
        fast = [s for s in subjects if s.model == name and s.path == "fast"]
        ref = [s for s in subjects if s.model == name and s.path == "reference"]
        if fast and ref:
            with torch.no_grad():
                a = models[fast[0]].eval()(x)
                b = models[ref[0]].eval()(x)
            consistency[name] = {"max_abs_logit_diff": (a - b).abs().max().item()}
    report["consistency"] = consistency

    results: list[dict] = []
    _save_partial(report, out_dir)
    # --- in-process, interleaved timing
    onnx_sessions: dict[str, Any] = {}
    for mode in [m for m in cfg["modes"] if m in IN_PROCESS_MODES]:
        autocast = _autocast_for(mode)
        for batch in cfg["batch_sizes"]:
            _log(f"{mode} inference batch {batch}: {[s.label for s in subjects]}")
            x, _ = common.random_batch(batch, cfg["img_size"], device)
            fns = {}
            timed = [s for s in subjects if not _skipped(cfg, s, "inference")]
            for s in timed:
                models[s].eval()
                fns[s.label] = common.inference_fn(models[s], x, device, autocast)
            if mode == "eager" and device.type == "cpu":
                timed += _onnxruntime_subjects(cfg, subjects, models, x, fns, onnx_sessions, report)
            bg: dict[str, list[float]] = {}
            times = common.time_interleaved(fns, cfg["warmup"], _iters_for(batch, cfg["iters"]), device, bg)
            for s in timed:
                row = dict(s.as_dict(), mode=mode, kind="inference", batch=batch, **common.summarize(
                    times[s.label], batch, bg.get(s.label)))
                _attach_flops(row, flops, peaks)
                results.append(row)
                _log(f"  {s.label:28s} {row['images_per_s']:8.2f} img/s")
            report["results"] = results
            _save_partial(report, out_dir)
    del models, sources, onnx_sessions
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- training steps: throughput interleaved in fresh processes (--train-runs of them), peak memory in one
    # fresh process per subject
    from . import worker
    memory: list[dict] = []
    train_runs: list[dict] = []
    for mode in [m for m in cfg["modes"] if m in IN_PROCESS_MODES]:
        for batch in cfg["train_batch_sizes"]:
            timed = [s for s in subjects if not _skipped(cfg, s, "train")]
            step_times: dict[str, list[float]] = {s.label: [] for s in timed}
            step_bg: dict[str, list[float]] = {s.label: [] for s in timed}
            for run_i in range(cfg["train_runs"] if timed else 0):
                _log(f"{mode} training batch {batch}, interleaved run {run_i + 1}/{cfg['train_runs']}: "
                     f"{[s.label for s in timed]}")
                res = worker.run_in_subprocess(dict(
                    task="train_interleaved", subjects=[[s.model, s.path] for s in timed], batch=batch,
                    device=str(device), img_size=cfg["img_size"], threads=threads, autocast=_autocast_for(mode),
                    warmup=max(cfg["warmup"], 1), iters=cfg["train_iters"], wait_quiet=cfg["wait_quiet_s"],
                    memory_fraction=cfg["memory_fraction"]), timeout=cfg["train_timeout_s"])
                train_runs.append(dict(res, mode=mode, batch=batch, run=run_i + 1))
                if res.get("status") != "ok":
                    _log(f"  {res.get('status')}: {res.get('output_tail', '')[-300:]}")
                    continue
                for label, t in res["timing"].items():
                    _log(f"  {label:28s} {t['images_per_s']:8.2f} img/s")
                for rnd in res["rounds"]:
                    for label, dt in rnd.items():
                        step_times[label].append(dt)
                for label, st in res["subject_status"].items():
                    if st != "ok":
                        report["notes"].append(f"{label} training batch {batch} run {run_i + 1}: {st}")
                report["train_runs"] = train_runs
                _save_partial(report, out_dir)
            for s in timed:
                if step_times[s.label]:
                    row = dict(s.as_dict(), mode=mode, kind="train", batch=batch,
                               runs=cfg["train_runs"], **common.summarize(step_times[s.label], batch))
                    row["statistic"] = (f"median of {len(step_times[s.label])} steps over {cfg['train_runs']} "
                                        "interleaved runs")
                    _attach_flops(row, flops, peaks)
                    results.append(row)
            if not cfg["train_memory"]:
                continue
            for s in subjects:
                if _skipped(cfg, s, "train"):
                    memory.append(dict(s.as_dict(), mode=mode, batch=batch, status="skipped (--skip)"))
                    continue
                _log(f"{mode} training batch {batch}: peak memory of {s.label} (own process)")
                task = dict(
                    task="train", model=s.model, path=s.path, batch=batch, device=str(device),
                    img_size=cfg["img_size"], threads=threads, autocast=_autocast_for(mode),
                    warmup=max(cfg["warmup"], 1), iters=1, wait_quiet=0.0, memory_fraction=cfg["memory_fraction"])
                res = worker.run_in_subprocess(task, timeout=cfg["train_timeout_s"])
                if res.get("status") == "out_of_memory" and args.allocator == "tuned":
                    # a heap that is never trimmed can fragment past the cap; glibc's default returns memory
                    _log("  out of memory with the tuned allocator: again with glibc's default allocator")
                    res = worker.run_in_subprocess(task, timeout=cfg["train_timeout_s"],
                                                   env_overrides={"DATVIT_CPU_ALLOCATOR": "system"})
                    res["allocator"] = "system (the tuned allocator ran out of memory)"
                    report["notes"].append(
                        f"{s.label} training batch {batch} " + (
                            "peak memory measured with glibc's default allocator: with the tuned one it ran out of "
                            "memory" if res.get("status") == "ok" else
                            f"ran out of memory (address space capped at {res.get('memory_cap_gb') or 0:.1f} GB) with "
                            "both allocators"))
                mem = {k: v for k, v in res.items() if k not in ("timing", "step_s")}
                memory.append(dict(s.as_dict(), mode=mode, batch=batch, **mem))
                if res.get("status") == "ok":
                    _log(f"  peak {res['peak_extra_mb']:.0f} MB")
                else:
                    _log(f"  {res.get('status')}: {res.get('error') or res.get('output_tail', '')[-300:]}")
                report["memory"] = memory
                _save_partial(report, out_dir)
    report["memory"] = memory
    report["train_runs"] = train_runs
    report["train_ratio_spread"] = rep.train_ratio_spread(train_runs)

    # --- torch.compile, one fresh process per measurement
    compiles: list[dict] = []
    for mode in [m for m in cfg["modes"] if "compile" in m]:
        compile_subjects = [s for s in common.expand_subjects(cfg["compile_models"], ["fast"])]
        for s in compile_subjects:
            for kind in cfg["compile_kinds"]:
                if cfg["compile_batch_sizes"]:
                    batches = cfg["compile_batch_sizes"]
                else:
                    pool = cfg["batch_sizes"] if kind == "inference" else cfg["train_batch_sizes"]
                    batches = [max(pool)] if pool else []
                for batch in batches:
                    _log(f"torch.compile {s.label} {kind} batch {batch} ({mode}), timeout "
                         f"{cfg['compile_timeout_s']:.0f}s")
                    res = worker.run_in_subprocess(dict(
                        task="compile", model=s.model, path=s.path, kind=kind, batch=batch, device=str(device),
                        img_size=cfg["img_size"], threads=threads, autocast=_autocast_for(mode),
                        warmup=1, iters=max(3, min(cfg["iters"], 5)), wait_quiet=cfg["wait_quiet_s"],
                        compile_mode=cfg["compile_mode"], freezing=cfg["freezing"] and kind == "inference"),
                        timeout=cfg["compile_timeout_s"])
                    entry = dict(s.as_dict(), mode=mode, kind=kind, batch=batch,
                                 freezing=cfg["freezing"] and kind == "inference", **res)
                    compiles.append(entry)
                    if res.get("status") == "ok":
                        _log(f"  compile {res['compile_s']:.0f}s, {res['compiled']['images_per_s']:.2f} img/s, "
                             f"{res['speedup_vs_eager']:.2f}× eager")
                        row = dict(s.as_dict(), mode=mode, kind=kind, batch=batch, **res["compiled"])
                        _attach_flops(row, flops, peaks)
                        results.append(row)
                    else:
                        _log(f"  {res.get('status')}: {res.get('output_tail', '')[-300:]}")
                    report["compile"], report["results"] = compiles, results
                    _save_partial(report, out_dir)
    report["compile"] = compiles
    report["results"] = results

    # --- the deformable attention module alone
    if cfg["module"]:
        _log("DeformableAttention module benchmark")
        iters = _iters_for(cfg["module_batch"], cfg["iters"]) * 2
        report["module"] = module_benchmark(device, cfg["module_batch"], cfg["warmup"], iters,
                                            with_flops=cfg["flops"])
        if "bf16" in cfg["modes"]:
            report["module_bf16"] = module_benchmark(device, cfg["module_batch"], cfg["warmup"], iters, "bfloat16",
                                                     with_flops=False)

    # the matmul peak again at the end (on a shared machine either moment may be busy); the higher one counts
    if cfg["flops"]:
        _log("matmul peak again")
        again = common.matmul_peak(cfg["matmul_sizes"], device, iters=max(3, min(cfg["iters"], 5)))
        report["matmul_peak_end"] = again
        if again["peak_gflops"] > peaks["float32"]:
            peaks["float32"] = again["peak_gflops"]
            report["matmul_peak"]["peak_gflops_start"] = report["matmul_peak"]["peak_gflops"]
            report["matmul_peak"]["peak_gflops"] = again["peak_gflops"]
            for r in results:
                if r.get("gflops") is not None and not _autocast_for(r["mode"]):
                    r["fraction_of_peak"] = r["gflops"] / peaks["float32"]
    report["ratios"] = rep.compute_ratios(results)
    report["onnxruntime"] = rep.onnxruntime_ratios(results)
    report["targets"] = rep.check_targets(report["ratios"], "eager")
    if device.type != "cpu":
        report["notes"].append("the targets of issue 4 are defined for the 2-core CPU; on this device they are "
                               "shown for information")
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["wall_s"] = time.perf_counter() - t_start

    (out_dir / "benchmark.json").write_text(json.dumps(report, indent=1, default=str))
    md = rep.markdown_report(report)
    (out_dir / "benchmark.md").write_text(md)
    if not args.no_chart:
        rep.bar_chart(report, out_dir / "benchmark.png")
    print(md)
    _log(f"wrote {out_dir / 'benchmark.json'}, benchmark.md" + ("" if args.no_chart else ", benchmark.png")
         + f" in {report['wall_s']:.0f}s")
    return report


def main(argv: Optional[Sequence[str]] = None, prog: str = "datvit bench", default_out: str = DEFAULT_OUT) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser, default_out)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join([prog] + [shlex.quote(a) for a in argv])
    try:
        run(args)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
