"""Where the time goes: torch.profiler tables of DAT models and of the DeformableAttention module
(``datvit bench profile``).

    datvit bench profile               # dat_tiny, datpp_tiny: inference + train, batch 32
    datvit bench profile --models dat_tiny --kinds inference --batch-size 8 --paths fast,reference
    datvit bench profile --only-module

For every case it prints (and writes to ``output``/profile_<case>.txt):

* the top ops by self CPU time (``key_averages().table``),
* the same grouped by input shapes (which shapes are slow),
* a per-block breakdown of the forward pass (stem, L/S/D/N attention, MLP, norms, LPU, downsampling, head),
  from ``record_function`` ranges wrapped around those modules (CPU total includes their children).

One untimed warm-up call precedes the profiled call(s).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from . import common, deformable

BLOCK_PREFIX = "block::"


def _block_name(module) -> Optional[str]:
    from torch import nn

    from datvit.layers import (
        ChannelLayerNorm,
        ConvMlp,
        ConvStem,
        DeformableAttention,
        Downsample,
        LocalAttention,
        Mlp,
        NeighborhoodAttention2D,
        PatchStem,
        ShiftWindowAttention,
    )

    table = [
        (ShiftWindowAttention, "S-attention"),
        (LocalAttention, "L-attention"),
        (DeformableAttention, "D-attention"),
        (NeighborhoodAttention2D, "N-attention"),
        (Mlp, "mlp"),
        (ConvMlp, "mlp"),
        (PatchStem, "stem"),
        (ConvStem, "stem"),
        (Downsample, "downsample"),
        (ChannelLayerNorm, "layernorm"),
    ]
    for cls, name in table:
        if isinstance(module, cls):
            return name
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels
        and module.kernel_size == (3, 3)
        and module.in_channels == module.out_channels
    ):
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
            rows[e.key[len(BLOCK_PREFIX) :]] = (e.cpu_time_total, e.count)
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
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40, max_shapes_column_width=90
    )
    blocks = _block_table(prof, total_self * repeat)
    text = (
        f"=== {title} ===\nwall per call (profiled) {wall * 1e3:.1f} ms; self CPU total {total_self / 1e3:.1f} ms"
        f"{' (per call, ' + str(repeat) + ' calls)' if repeat > 1 else ''}\n\n-- top {rows} ops by self CPU time"
        f" --\n{top}\n-- by input shape --\n{by_shape}\n-- forward breakdown by block --\n{blocks}\n"
    )
    top_ops = [
        dict(
            name=e.key,
            self_cpu_ms=e.self_cpu_time_total / 1e3 / repeat,
            calls=e.count // repeat,
            pct=100 * e.self_cpu_time_total / (total_self * repeat),
        )
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    ]
    return {
        "title": title,
        "wall_ms": wall * 1e3,
        "self_cpu_total_ms": total_self / 1e3,
        "top_ops": top_ops,
        "text": text,
    }


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
        yield (
            f"{subject.label}_{kind}_b{batch}",
            profile_call(
                fn,
                rows,
                f"{subject.label} {kind} batch {batch} ({img}×{img}), fp32 eager, {torch.get_num_threads()} threads",
            ),
        )


def module_cases(batch: int, device, rows: int):
    m, x_cl, x_ref = deformable.module_case(batch, device)
    steps = deformable.module_steps(m, x_cl, x_ref, device)
    for impl in ("fast", "reference"):
        for p in deformable.PASSES:
            m.train(p == "forward_backward")
            yield (
                f"deformable_attention_{impl}_{p}_b{batch}",
                profile_call(
                    steps[f"{impl}/{p}"],
                    rows,
                    f"DeformableAttention {impl} {p.replace('_', '+')} ({deformable.shape(batch)})",
                    warmup=2,
                    repeat=5,
                ),
            )


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """What :func:`run` profiles: each of ``models`` (on each DAT ``paths`` entry) for each of ``kinds``
    (inference, train) at ``batch_size``, unless ``only_module``; then, unless ``module`` is False, the
    DeformableAttention module at ``module_batch``. ``rows``: ops per table."""

    models: tuple[str, ...] = ("dat_tiny", "datpp_tiny")
    paths: tuple[str, ...] = ("fast",)
    kinds: tuple[str, ...] = ("inference", "train")
    batch_size: int = 32
    img_size: int = 224
    module_batch: int = 8
    module: bool = True
    only_module: bool = False
    rows: int = 20
    threads: Optional[int] = None
    device: str = "auto"
    allocator: str = "tuned"
    output: str = common.DEFAULT_OUTPUT + "/profile"

    def __post_init__(self) -> None:
        common.freeze_sequences(self, ("models", "paths", "kinds"))


def run(config: ProfileConfig) -> dict[str, Any]:
    """Profile every case, print its tables and write them to ``config.output`` (profile_<case>.txt, and
    profile_summary.json: the summary returned, by case)."""
    common.apply_allocator(config.allocator)
    common.set_threads(config.threads)
    device = common.pick_device(config.device)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}

    def emit(name, res):
        (out / f"profile_{name}.txt").write_text(res["text"])
        print(res["text"], flush=True)
        summary[name] = {k: v for k, v in res.items() if k != "text"}

    if not config.only_module:
        for s in common.expand_subjects(config.models, config.paths):
            for name, res in model_cases(s, config.kinds, config.batch_size, config.img_size, device, config.rows):
                emit(name, res)
    if config.module:
        for name, res in module_cases(config.module_batch, device, config.rows):
            emit(name, res)
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return summary
