"""Where the time goes: torch.profiler tables of DAT models and of the DeformableAttention module.

    python -m datvit.tools.benchmark.profile               # dat_tiny, datpp_tiny: inference + train, batch 32
    python -m datvit.tools.benchmark.profile --models dat_tiny --kinds inference --batch 8 --paths fast,reference
    python -m datvit.tools.benchmark.profile --only-module

For every case it prints (and writes to ``--output``/profile_<case>.txt):

* the top ops by self CPU time (``key_averages().table``),
* the same grouped by input shapes (which shapes are slow),
* a per-block breakdown of the forward pass (stem, L/S/D/N attention, MLP, norms, LPU, downsampling, head),
  from ``record_function`` ranges wrapped around those modules (CPU total includes their children).

One untimed warm-up call precedes the profiled call(s).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import common, deformable

BLOCK_PREFIX = "block::"


def _block_name(module) -> Optional[str]:
    from torch import nn

    from datvit.layers import (ChannelLayerNorm, ConvMlp, ConvStem, DeformableAttention, Downsample, LocalAttention,
                               Mlp, NeighborhoodAttention2D, PatchStem, ShiftWindowAttention)

    table = [
        (ShiftWindowAttention, "S-attention"), (LocalAttention, "L-attention"),
        (DeformableAttention, "D-attention"), (NeighborhoodAttention2D, "N-attention"),
        (Mlp, "mlp"), (ConvMlp, "mlp"), (PatchStem, "stem"), (ConvStem, "stem"), (Downsample, "downsample"),
        (ChannelLayerNorm, "layernorm"),
    ]
    for cls, name in table:
        if isinstance(module, cls):
            return name
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels and module.kernel_size == (3, 3) \
            and module.in_channels == module.out_channels:
        return "lpu/dwconv3x3"
    if isinstance(module, nn.Linear) and getattr(module, "_is_head", False):
        return "head"
    return None


def annotate_blocks(model) -> None:
    """Wrap ``forward`` and ``reference_forward`` of the interesting modules in ``record_function`` ranges.

    Instance attributes shadow the class methods, so both paths are covered without hooks (the reference path
    calls ``reference_forward`` directly). Modules nested in an annotated module (e.g. the offset network's
    LayerNorm inside a D block) are not annotated, so the ranges do not overlap."""
    import functools

    import torch

    def wrap(fn, name):
        @functools.wraps(fn)
        def inner(*a, **k):
            with torch.profiler.record_function(BLOCK_PREFIX + name):
                return fn(*a, **k)
        return inner

    skip: set[int] = set()
    for module in model.modules():
        if id(module) in skip:
            continue
        name = _block_name(module)
        if name is None:
            continue
        for sub in module.modules():
            skip.add(id(sub))
        for attr in ("forward", "reference_forward"):
            if hasattr(module, attr):
                setattr(module, attr, wrap(getattr(module, attr), name))


def _block_table(prof, total_us: float) -> str:
    rows = {}
    for e in prof.key_averages():
        if e.key.startswith(BLOCK_PREFIX):
            rows[e.key[len(BLOCK_PREFIX):]] = (e.cpu_time_total, e.count)
    lines = [f"{'block (forward only)':24s} {'CPU total ms':>13s} {'% of step':>10s} {'calls':>6s}"]
    for name, (us, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{name:24s} {us / 1e3:13.1f} {100 * us / total_us:9.1f}% {n:6d}")
    covered = sum(us for us, _ in rows.values())
    lines.append(f"{'(sum of blocks)':24s} {covered / 1e3:13.1f} {100 * covered / total_us:9.1f}%")
    return "\n".join(lines)


def profile_call(fn, rows: int, title: str, warmup: int = 1, repeat: int = 1) -> dict[str, Any]:
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    t0 = time.perf_counter()
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(repeat):
            fn()
    wall = (time.perf_counter() - t0) / repeat
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / repeat
    top = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40, max_shapes_column_width=90)
    blocks = _block_table(prof, total_self * repeat)
    text = (f"=== {title} ===\nwall per call (profiled) {wall * 1e3:.1f} ms; self CPU total {total_self / 1e3:.1f} ms"
            f"{' (per call, ' + str(repeat) + ' calls)' if repeat > 1 else ''}\n\n-- top {rows} ops by self CPU time"
            f" --\n{top}\n-- by input shape --\n{by_shape}\n-- forward breakdown by block --\n{blocks}\n")
    top_ops = [dict(name=e.key, self_cpu_ms=e.self_cpu_time_total / 1e3 / repeat, calls=e.count // repeat,
                    pct=100 * e.self_cpu_time_total / (total_self * repeat))
               for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]]
    return {"title": title, "wall_ms": wall * 1e3, "self_cpu_total_ms": total_self / 1e3, "top_ops": top_ops,
            "text": text}


def model_cases(subject: common.Subject, kinds: Sequence[str], batch: int, img: int, device, rows: int):
    import torch

    model = common.build_model(subject, device, img)
    annotate_blocks(model)
    x, y = common.random_batch(batch, img, device)
    for kind in kinds:
        if kind == "inference":
            model.eval()
            fn = common.inference_fn(model, x, device, None)
        else:
            model.train()
            fn, _ = common.train_fn(model, x, y, device, None)
        yield f"{subject.label}_{kind}_b{batch}", profile_call(
            fn, rows, f"{subject.label} {kind} batch {batch} ({img}×{img}), fp32 eager, {torch.get_num_threads()} "
                      "threads")


def module_cases(batch: int, device, rows: int):
    m, x_cl, x_ref = deformable.module_case(batch, device)
    steps = deformable.module_steps(m, x_cl, x_ref, device)
    for impl in ("fast", "reference"):
        for p in deformable.PASSES:
            m.train(p == "forward_backward")
            yield f"deformable_attention_{impl}_{p}_b{batch}", profile_call(
                steps[f"{impl}/{p}"], rows, f"DeformableAttention {impl} {p.replace('_', '+')} "
                                            f"({deformable.shape(batch)})", warmup=2, repeat=5)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datvit.tools.benchmark.profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dat_tiny,datpp_tiny")
    p.add_argument("--paths", default="fast", help="DAT paths to profile (fast, reference)")
    p.add_argument("--kinds", default="inference,train")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--module-batch", type=int, default=8)
    p.add_argument("--no-module", action="store_true")
    p.add_argument("--only-module", action="store_true")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    common.add_allocator_argument(p)
    common.add_output_argument(p, common.DEFAULT_OUTPUT + "/profile")
    args = p.parse_args(argv)

    common.apply_allocator(args.allocator)
    common.set_threads(args.threads)
    device = common.pick_device(args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}

    def emit(name, res):
        (out / f"profile_{name}.txt").write_text(res["text"])
        print(res["text"], flush=True)
        summary[name] = {k: v for k, v in res.items() if k != "text"}

    if not args.only_module:
        kinds = [k for k in args.kinds.split(",") if k]
        subjects = common.expand_subjects([m for m in args.models.split(",") if m],
                                          [p for p in args.paths.split(",") if p])
        for s in subjects:
            for name, res in model_cases(s, kinds, args.batch, args.img_size, device, args.rows):
                emit(name, res)
    if not args.no_module:
        for name, res in module_cases(args.module_batch, device, args.rows):
            emit(name, res)
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
