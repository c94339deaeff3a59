"""The datvit benchmark: ``datvit bench``.

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

It prints markdown tables and writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` into ``--output``.
:func:`run` calls one function per phase, in the order below; each adds its part to the report and rewrites
``benchmark.partial.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from ...models import count_parameters
from . import common, deformable, worker
from . import report as rep

DEFAULT_MODELS = ("dat_tiny", "datpp_tiny", "swin_tiny_patch4_window7_224", "convnext_tiny")
IN_PROCESS_MODES = ("eager", "bf16")
ALL_MODES = ("eager", "compile", "bf16", "bf16-compile")


# the sequence fields (a string given for one is a comma-separated list), and those that may stay None
SEQUENCE_FIELDS = (
    "models",
    "paths",
    "batch_sizes",
    "train_batch_sizes",
    "modes",
    "compile_models",
    "compile_kinds",
    "compile_batch_sizes",
    "onnx_models",
    "matmul_sizes",
    "skip",
    "notes",
)
OPTIONAL_SEQUENCES = ("batch_sizes", "train_batch_sizes", "modes", "compile_batch_sizes")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What ``datvit bench`` measures and how, one field per flag. A ``None`` field takes a default that depends on
    the device or on ``quick``; :func:`resolve_options` turns the whole into the values the phases read.

    * ``models``: timm names (a DAT model becomes one subject per entry of ``paths``); aliases ``swin``, ``convnext``;
    * ``batch_sizes`` / ``train_batch_sizes``: inference and training-step batches (``()``: none); None: 1,32 and
      32, or 1,8 and 8 with ``quick``;
    * ``modes``: from eager, compile, bf16, bf16-compile; None: eager,compile on CPU, eager,bf16,compile on CUDA;
      ``compile=False`` (and ``quick``) leave the compile modes out;
    * ``compile_*``: which models, kinds (inference, train) and batches (None: the largest of each kind) are
      torch.compiled, in which mode, with inductor ``freezing`` for inference, and the seconds each may take;
    * ``iters`` / ``warmup``: timed and untimed iterations per measurement (×4 below batch 8); ``train_iters``
      (None: ``iters``) timed training steps in each of ``train_runs`` fresh processes;
    * ``train_memory``: the per-subject processes that measure a training step's peak memory, each capped at
      ``memory_fraction`` of the memory available (0: no cap) and abandoned after ``train_timeout`` seconds;
    * ``onnx_models``: also timed in onnxruntime and in OpenVINO (CPU, fp32; the same ONNX file; OpenVINO rows
      skipped with a note where it is not installed); ``module``: the DeformableAttention module alone at
      ``module_batch``; ``flops``: FLOP counting, for GFLOP/s against the peak of ``matmul_sizes`` matmuls;
    * ``skip``: ``LABEL:KIND`` measurements to leave out (``swin_t:train``); ``notes``: text for the report;
    * ``wait_quiet``: seconds a timed call may wait for other processes to go quiet; ``allocator``: ``tuned``
      (:func:`datvit.tune_cpu_allocator`) or ``system``;
    * ``output``: directory of benchmark.json, benchmark.md and (with ``chart``) benchmark.png;
      ``command_line``: the command recorded in the report (None: this process's arguments).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    paths: tuple[str, ...] = common.DAT_PATHS
    batch_sizes: Optional[tuple[int, ...]] = None
    train_batch_sizes: Optional[tuple[int, ...]] = None
    modes: Optional[tuple[str, ...]] = None
    compile: bool = True
    compile_models: tuple[str, ...] = ("dat_tiny",)
    compile_kinds: tuple[str, ...] = ("inference", "train")
    compile_batch_sizes: Optional[tuple[int, ...]] = None
    compile_mode: str = "default"
    freezing: bool = True
    compile_timeout: float = 900.0
    iters: int = 5
    warmup: int = 2
    quick: bool = False
    device: str = "auto"
    threads: Optional[int] = None
    img_size: int = 224
    train_iters: Optional[int] = None
    train_runs: int = 3
    train_memory: bool = True
    train_timeout: float = 3600.0
    memory_fraction: float = 0.85
    onnx_models: tuple[str, ...] = ("dat_tiny", "swin")
    module: bool = True
    module_batch: int = 8
    flops: bool = True
    matmul_sizes: tuple[int, ...] = (2048, 3072, 4096)
    output: str = common.DEFAULT_OUTPUT
    chart: bool = True
    skip: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    wait_quiet: float = 0.0
    allocator: str = "tuned"
    command_line: Optional[str] = None

    def __post_init__(self) -> None:
        common.freeze_sequences(self, SEQUENCE_FIELDS, OPTIONAL_SEQUENCES)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _iters_for(batch: int, iters: int) -> int:
    return iters if batch >= 8 else 4 * iters


def _check_names(cfg: dict[str, Any]) -> None:
    import timm

    import datvit  # noqa: F401  (registers the DAT variants with timm)

    unknown = [m for m in cfg["models"] if not timm.is_model(m)]
    if unknown:
        raise ValueError(
            f"--models: unknown model(s) {', '.join(unknown)} (DAT variants: `datvit models`; or any timm model name)"
        )
    bad = [p for p in cfg["paths"] if p not in common.DAT_PATHS]
    if bad:
        raise ValueError(f"unknown --paths {bad}; choose from {common.DAT_PATHS}")
    bad = [m for m in cfg["modes"] if m not in ALL_MODES]
    if bad:
        raise ValueError(f"unknown --modes {bad}; choose from {ALL_MODES}")
    for item in cfg["skip"]:
        if item.rsplit(":", 1)[-1] not in ("inference", "train"):
            raise ValueError(f"--skip {item!r}: expected LABEL:inference or LABEL:train")


def _positive(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values if int(v) > 0]


def resolve_options(config: BenchConfig, device) -> dict[str, Any]:
    """``config`` as the values the phases read (and the report records); ValueError for a bad one. ``quick``
    shrinks what ``config`` leaves at its defaults."""
    quick = config.quick
    default_modes = ["eager", "bf16", "compile"] if device.type == "cuda" else ["eager", "compile"]
    cfg: dict[str, Any] = dict(
        models=[common.resolve_model_name(m) for m in config.models],
        paths=list(config.paths),
        batch_sizes=_positive(config.batch_sizes if config.batch_sizes is not None else (1, 8) if quick else (1, 32)),
        train_batch_sizes=_positive(
            config.train_batch_sizes if config.train_batch_sizes is not None else (8,) if quick else (32,)
        ),
        modes=list(config.modes) if config.modes else default_modes,
        iters=min(config.iters, 2) if quick else config.iters,
        warmup=min(config.warmup, 1) if quick else config.warmup,
        matmul_sizes=_positive(config.matmul_sizes)[: 1 if quick else None],
        skip=list(config.skip),
    )
    _check_names(cfg)
    if quick or not config.compile:
        cfg["modes"] = [m for m in cfg["modes"] if "compile" not in m]
    cfg.update(
        compile_models=[common.resolve_model_name(m) for m in config.compile_models],
        compile_kinds=list(config.compile_kinds),
        # None: the largest inference / training batch
        compile_batch_sizes=_positive(config.compile_batch_sizes) if config.compile_batch_sizes else None,
        compile_timeout_s=config.compile_timeout,
        compile_mode=config.compile_mode,
        freezing=config.freezing,
        img_size=config.img_size,
        train_iters=config.train_iters or cfg["iters"],
        train_timeout_s=config.train_timeout,
        train_runs=1 if quick else max(1, config.train_runs),
        train_memory=config.train_memory,
        memory_fraction=config.memory_fraction,
        onnx_models=[common.resolve_model_name(m) for m in config.onnx_models],
        module=config.module,
        module_batch=config.module_batch,
        flops=config.flops,
        wait_quiet_s=config.wait_quiet,
    )
    return cfg


@dataclass
class Bench:
    """What every phase reads and adds to: the options, the device, the report being written, and the FLOP counts
    and matmul peaks that the throughput rows are scored against."""

    config: BenchConfig
    cfg: dict[str, Any]
    device: Any
    threads: int
    out_dir: Path
    report: dict[str, Any]
    flops: dict[str, dict] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)

    def in_process_modes(self) -> list[str]:
        return [m for m in self.cfg["modes"] if m in IN_PROCESS_MODES]

    def skipped(self, subject: common.Subject, kind: str) -> bool:
        return f"{subject.label}:{kind}" in self.cfg["skip"]

    def add_row(self, row: dict) -> dict:
        """Append a throughput row, with its GFLOP/s and fraction of the matmul peak where FLOPs were counted."""
        f = self.flops.get(row["model"])
        if f:
            row["gflop_per_image"] = f["forward_gflop"] if row["kind"] == "inference" else f["train_gflop"]
            row["gflops"] = row["gflop_per_image"] * row["images_per_s"]
            peak = self.peaks.get(_autocast_for(row["mode"]) or "float32")
            if peak:
                row["fraction_of_peak"] = row["gflops"] / peak
        self.results.append(row)
        return row

    def task(self, name: str, mode: str, batch: int, **fields) -> dict[str, Any]:
        """A worker task with what every task needs from this run."""
        return dict(
            task=name,
            batch=batch,
            device=str(self.device),
            img_size=self.cfg["img_size"],
            threads=self.threads,
            autocast=_autocast_for(mode),
            **fields,
        )

    def save_partial(self) -> None:
        """Write what has been measured so far (a long run that dies keeps its results)."""
        try:
            (self.out_dir / "benchmark.partial.json").write_text(json.dumps(self.report, indent=1, default=str))
        except OSError:
            pass


def _autocast_for(mode: str) -> Optional[str]:
    return "bfloat16" if mode.startswith("bf16") else None


def _peak_iters(cfg: dict) -> int:
    return max(3, min(cfg["iters"], 5))


# -- phases, in the order run() calls them ----------------------------------------------------------------------


def start(config: BenchConfig) -> Bench:
    """Allocator, device and threads for this process and its workers; the options; the report's header."""
    common.apply_allocator(config.allocator)
    device = common.pick_device(config.device)
    threads = common.set_threads(config.threads)
    cfg = resolve_options(config, device)
    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = config.command_line or shlex.join(sys.argv)
    report: dict[str, Any] = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": cfg,
        "machine": common.machine_info(device, threads),
        "notes": list(config.notes),
    }
    common.QUIET_WAIT_S = cfg["wait_quiet_s"]
    _log(f"device {device}, {threads} threads, modes {cfg['modes']}")
    return Bench(config, cfg, device, threads, out_dir, report)


def drop_emulated_bf16(b: Bench) -> None:
    """Leave out the bf16 modes on a CPU without native bf16, where it is emulated hundreds of times slower."""
    if not any(m.startswith("bf16") for m in b.cfg["modes"]):
        return
    probe = b.report["bf16_probe"] = common.bf16_probe(b.device)
    if b.device.type == "cpu" and probe["bf16_over_fp32"] < 0.5:
        b.report["notes"].append(
            f"bf16 modes skipped: bf16 matmul runs at {probe['bf16_over_fp32']:.3f}× fp32 on this CPU (no native bf16)"
        )
        b.cfg["modes"] = [m for m in b.cfg["modes"] if not m.startswith("bf16")]


def measure_matmul_peak(b: Bench) -> None:
    """The fp32 (and, for bf16 modes, bf16) matmul peak that GFLOP/s are compared with."""
    _log(f"matmul peak at {b.cfg['matmul_sizes']}")
    b.report["matmul_peak"] = common.matmul_peak(b.cfg["matmul_sizes"], b.device, iters=_peak_iters(b.cfg))
    b.peaks["float32"] = b.report["matmul_peak"]["peak_gflops"]
    if any(m.startswith("bf16") for m in b.cfg["modes"]):
        b.report["matmul_peak_bf16"] = common.matmul_peak(
            b.cfg["matmul_sizes"], b.device, iters=3, dtype_name="bfloat16"
        )
        b.peaks["bfloat16"] = b.report["matmul_peak_bf16"]["peak_gflops"]
    _log(f"fp32 matmul peak {b.peaks['float32']:.1f} GFLOP/s")


def build_subjects(b: Bench) -> dict[common.Subject, Any]:
    """One model per subject (a DAT model's paths share weights), recorded with its parameter count."""
    subjects = common.expand_subjects(b.cfg["models"], b.cfg["paths"])
    models = common.build_models(subjects, b.device, b.cfg["img_size"])
    b.report["subjects"] = [dict(s.as_dict(), params_m=count_parameters(m) / 1e6) for s, m in models.items()]
    return models


def count_flops(b: Bench, models: dict[common.Subject, Any]) -> None:
    """FLOPs per image of each model: for DAT the reference path's count (the papers'), and what the fast path
    executes next to it."""
    if not b.cfg["flops"]:
        return
    img = b.cfg["img_size"]
    for s, model in models.items():
        if s.model in b.flops:
            continue
        _log(f"counting FLOPs of {s.model}")
        b.flops[s.model] = common.model_flops(model, img, path="reference")
        if s.dat:
            executed = common.model_flops(model, img, path="fast")
            b.flops[s.model]["executed_fast_forward_gflop"] = executed["forward_gflop"]
            b.flops[s.model]["executed_fast_train_gflop"] = executed["train_gflop"]
    b.report["flops"] = b.flops
    b.report["flops_note"] = common.FLOP_COUNT_NOTE
    if "dat_tiny" in b.flops:
        b.report["notes"].append(
            f"dat_tiny counted {b.flops['dat_tiny']['forward_gflop']:.3f} GFLOP/image "
            "(published: 4.59 GMAC = 9.18 GFLOP)"
        )


def check_consistency(b: Bench, models: dict[common.Subject, Any]) -> None:
    """The largest logit difference between the fast and the reference path of each DAT model."""
    import torch

    x, _ = common.random_batch(1, b.cfg["img_size"], b.device, seed=1)
    consistency = {}
    for s, model in models.items():
        ref = models.get(common.Subject(s.model, "reference"))
        if s.path == "fast" and ref is not None:
            with torch.no_grad():
                diff = (model.eval()(x) - ref.eval()(x)).abs().max().item()
            consistency[s.model] = {"max_abs_logit_diff": diff}
    b.report["consistency"] = consistency


def time_inference(b: Bench, models: dict[common.Subject, Any]) -> None:
    """Images/s of every subject (and the onnxruntime and OpenVINO rows) per in-process mode and batch size."""
    b.report["results"] = b.results
    sessions: dict[str, Any] = {}
    for mode in b.in_process_modes():
        for batch in b.cfg["batch_sizes"]:
            _time_inference_batch(b, models, mode, batch, sessions)
            b.save_partial()


def _time_inference_batch(
    b: Bench, models: dict[common.Subject, Any], mode: str, batch: int, sessions: dict[str, Any]
) -> None:
    _log(f"{mode} inference batch {batch}: {[s.label for s in models]}")
    x, _ = common.random_batch(batch, b.cfg["img_size"], b.device)
    timed = [s for s in models if not b.skipped(s, "inference")]
    fns = {s.label: common.inference_fn(models[s].eval(), x, b.device, _autocast_for(mode)) for s in timed}
    if mode == "eager" and b.device.type == "cpu":
        timed += _onnxruntime_subjects(b, models, x, fns, sessions)
        timed += _openvino_subjects(b, x, fns, sessions)
    bg: dict[str, list[float]] = {}
    times = common.time_interleaved(fns, b.cfg["warmup"], _iters_for(batch, b.cfg["iters"]), b.device, bg)
    for s in timed:
        row = b.add_row(
            dict(
                s.as_dict(),
                mode=mode,
                kind="inference",
                batch=batch,
                **common.summarize(times[s.label], batch, bg.get(s.label)),
            )
        )
        _log(f"  {s.label:28s} {row['images_per_s']:8.2f} img/s")


def _onnxruntime_subjects(b: Bench, models: dict[common.Subject, Any], x, fns: dict, sessions: dict) -> list:
    """ONNX Runtime (CPU, fp32) subjects for ``--onnx-models``, added to ``fns``: each model exported once (for a
    DAT model its fast-path module with the same weights) and kept in ``sessions``; a failure becomes a note."""
    import tempfile

    added = []
    for name in b.cfg["onnx_models"]:
        source = next((s for s in models if s.model == name and s.path in ("fast", "timm")), None)
        subject = common.Subject(name, "onnxruntime")
        if source is None or sessions.get(subject.label, True) is None:  # not measured, or its export failed
            continue
        try:
            if subject.label not in sessions:
                _log(f"exporting {name} to ONNX for onnxruntime")
                path = common.export_onnx_file(
                    models[source], b.cfg["img_size"], tempfile.mkdtemp(prefix="datvit-bench-onnx-")
                )
                sessions[subject.label] = common.onnxruntime_session(path)
                sessions[f"{name}:onnx-file"] = path  # for the OpenVINO row
            fns[subject.label] = common.onnxruntime_fn(sessions[subject.label], x)
            added.append(subject)
        except Exception as exc:  # noqa: BLE001 (an exporter or runtime failure must not end the benchmark)
            sessions[subject.label] = None
            b.report["notes"].append(f"onnxruntime row of {name} skipped: {str(exc).strip().splitlines()[0][:300]}")
    return added


def _openvino_subjects(b: Bench, x, fns: dict, sessions: dict) -> list:
    """OpenVINO (CPU, fp32) subjects for ``--onnx-models``: the ONNX file each onnxruntime row runs, compiled by
    OpenVINO at this batch size (kept in ``sessions``), on torch's thread count. Without the openvino package the
    rows are skipped with one note; a compile failure becomes a note too."""
    exported = [
        (name, sessions[f"{name}:onnx-file"]) for name in b.cfg["onnx_models"] if f"{name}:onnx-file" in sessions
    ]
    if not exported:
        return []
    try:
        import openvino  # noqa: F401
    except ImportError:
        note = "openvino rows skipped: openvino is not installed (pip install 'datvit[export]')"
        if note not in b.report["notes"]:
            b.report["notes"].append(note)
        return []
    import torch

    added = []
    batch = int(x.shape[0])
    for name, path in exported:
        subject = common.Subject(name, "openvino")
        key = f"{subject.label}@{batch}"
        if sessions.get(subject.label, True) is None:  # its compile failed at another batch size
            continue
        try:
            if key not in sessions:
                _log(f"compiling {name} in OpenVINO at batch {batch}")
                sessions[key] = common.openvino_compiled(path, batch, torch.get_num_threads())
            fns[subject.label] = common.openvino_fn(sessions[key], x)
            added.append(subject)
        except Exception as exc:  # noqa: BLE001 (a runtime failure must not end the benchmark)
            sessions[subject.label] = None
            b.report["notes"].append(f"openvino row of {name} skipped: {str(exc).strip().splitlines()[0][:300]}")
    return added


def time_training(b: Bench, subjects: list[common.Subject]) -> None:
    """Training-step images/s: all subjects stepping interleaved in ``--train-runs`` fresh processes per mode and
    batch; rows from the steps of all runs, and each run's ratios."""
    b.report["train_runs"] = []
    for mode in b.in_process_modes():
        for batch in b.cfg["train_batch_sizes"]:
            _train_interleaved(b, [s for s in subjects if not b.skipped(s, "train")], mode, batch)
    b.report["train_ratio_spread"] = rep.train_ratio_spread(b.report["train_runs"])


def _train_interleaved(b: Bench, timed: list[common.Subject], mode: str, batch: int) -> None:
    runs = b.cfg["train_runs"]
    step_times: dict[str, list[float]] = {s.label: [] for s in timed}
    for run_i in range(runs if timed else 0):
        _log(f"{mode} training batch {batch}, interleaved run {run_i + 1}/{runs}: {[s.label for s in timed]}")
        res = worker.run_in_subprocess(
            b.task(
                "train_interleaved",
                mode,
                batch,
                subjects=[[s.model, s.path] for s in timed],
                warmup=max(b.cfg["warmup"], 1),
                iters=b.cfg["train_iters"],
                wait_quiet=b.cfg["wait_quiet_s"],
                memory_fraction=b.cfg["memory_fraction"],
            ),
            timeout=b.cfg["train_timeout_s"],
        )
        b.report["train_runs"].append(dict(res, mode=mode, batch=batch, run=run_i + 1))
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
                b.report["notes"].append(f"{label} training batch {batch} run {run_i + 1}: {st}")
        b.save_partial()
    for s in timed:
        if step_times[s.label]:
            row = dict(
                s.as_dict(),
                mode=mode,
                kind="train",
                batch=batch,
                runs=runs,
                **common.summarize(step_times[s.label], batch),
            )
            row["statistic"] = f"median of {len(step_times[s.label])} steps over {runs} interleaved runs"
            b.add_row(row)


def measure_training_memory(b: Bench, subjects: list[common.Subject]) -> None:
    """The peak memory of a training step, each subject in a fresh process of its own."""
    memory = b.report["memory"] = []
    if not b.cfg["train_memory"]:
        return
    for mode in b.in_process_modes():
        for batch in b.cfg["train_batch_sizes"]:
            for s in subjects:
                memory.append(dict(s.as_dict(), mode=mode, batch=batch, **_training_memory(b, s, mode, batch)))
                b.save_partial()


def _training_memory(b: Bench, s: common.Subject, mode: str, batch: int) -> dict[str, Any]:
    if b.skipped(s, "train"):
        return {"status": "skipped (--skip)"}
    _log(f"{mode} training batch {batch}: peak memory of {s.label} (own process)")
    task = b.task(
        "memory",
        mode,
        batch,
        model=s.model,
        path=s.path,
        warmup=max(b.cfg["warmup"], 1),
        iters=1,
        memory_fraction=b.cfg["memory_fraction"],
    )
    res = worker.run_in_subprocess(task, timeout=b.cfg["train_timeout_s"])
    if res.get("status") == "out_of_memory" and b.config.allocator == "tuned":
        # a heap that is never trimmed can fragment past the cap; glibc's default returns memory
        _log("  out of memory with the tuned allocator: again with glibc's default allocator")
        res = worker.run_in_subprocess(
            task, timeout=b.cfg["train_timeout_s"], env_overrides={"DATVIT_CPU_ALLOCATOR": "system"}
        )
        res["allocator"] = "system (the tuned allocator ran out of memory)"
        b.report["notes"].append(
            f"{s.label} training batch {batch} "
            + (
                "peak memory measured with glibc's default allocator: with the tuned one it ran out of memory"
                if res.get("status") == "ok"
                else f"ran out of memory (address space capped at {res.get('memory_cap_gb') or 0:.1f} GB) with both "
                "allocators"
            )
        )
    if res.get("status") == "ok":
        _log(f"  peak {res['peak_extra_mb']:.0f} MB")
    else:
        _log(f"  {res.get('status')}: {res.get('error') or res.get('output_tail', '')[-300:]}")
    return res


def time_compile(b: Bench) -> None:
    """torch.compile of ``--compile-models`` (fast path), one fresh process per mode, kind and batch: compile
    time, and compiled against eager speed in that process."""
    compiles = b.report["compile"] = []
    for mode in [m for m in b.cfg["modes"] if "compile" in m]:
        for s in common.expand_subjects(b.cfg["compile_models"], ["fast"]):
            for kind in b.cfg["compile_kinds"]:
                pool = b.cfg["batch_sizes"] if kind == "inference" else b.cfg["train_batch_sizes"]
                for batch in b.cfg["compile_batch_sizes"] or ([max(pool)] if pool else []):
                    compiles.append(_compile_one(b, s, mode, kind, batch))
                    b.save_partial()


def _compile_one(b: Bench, s: common.Subject, mode: str, kind: str, batch: int) -> dict[str, Any]:
    _log(f"torch.compile {s.label} {kind} batch {batch} ({mode}), timeout {b.cfg['compile_timeout_s']:.0f}s")
    freezing = b.cfg["freezing"] and kind == "inference"
    res = worker.run_in_subprocess(
        b.task(
            "compile",
            mode,
            batch,
            model=s.model,
            path=s.path,
            kind=kind,
            warmup=1,
            iters=_peak_iters(b.cfg),
            wait_quiet=b.cfg["wait_quiet_s"],
            compile_mode=b.cfg["compile_mode"],
            freezing=freezing,
        ),
        timeout=b.cfg["compile_timeout_s"],
    )
    if res.get("status") == "ok":
        _log(
            f"  compile {res['compile_s']:.0f}s, {res['compiled']['images_per_s']:.2f} img/s, "
            f"{res['speedup_vs_eager']:.2f}× eager"
        )
        b.add_row(dict(s.as_dict(), mode=mode, kind=kind, batch=batch, **res["compiled"]))
    else:
        _log(f"  {res.get('status')}: {res.get('output_tail', '')[-300:]}")
    return dict(s.as_dict(), mode=mode, kind=kind, batch=batch, freezing=freezing, **res)


def time_module(b: Bench) -> None:
    """The DeformableAttention module alone, fast vs reference (and in bf16 with the bf16 mode)."""
    if not b.cfg["module"]:
        return
    _log("DeformableAttention module benchmark")
    batch, iters = b.cfg["module_batch"], _iters_for(b.cfg["module_batch"], b.cfg["iters"]) * 2
    b.report["module"] = deformable.module_benchmark(b.device, batch, b.cfg["warmup"], iters, with_flops=b.cfg["flops"])
    if "bf16" in b.cfg["modes"]:
        b.report["module_bf16"] = deformable.module_benchmark(
            b.device, batch, b.cfg["warmup"], iters, "bfloat16", with_flops=False
        )


def remeasure_matmul_peak(b: Bench) -> None:
    """The matmul peak again (on a shared machine either moment may be busy); the higher one counts, and the
    fp32 rows' fractions of the peak follow it."""
    if not b.cfg["flops"]:
        return
    _log("matmul peak again")
    again = b.report["matmul_peak_end"] = common.matmul_peak(b.cfg["matmul_sizes"], b.device, iters=_peak_iters(b.cfg))
    first = b.report["matmul_peak"]
    if again["peak_gflops"] > b.peaks["float32"]:
        b.peaks["float32"] = again["peak_gflops"]
        first["peak_gflops_start"], first["peak_gflops"] = first["peak_gflops"], again["peak_gflops"]
        for r in b.results:
            if r.get("gflops") is not None and not _autocast_for(r["mode"]):
                r["fraction_of_peak"] = r["gflops"] / b.peaks["float32"]


def write_report(b: Bench, t_start: float) -> dict[str, Any]:
    """Ratios and target checks, then benchmark.json, benchmark.md (also printed) and benchmark.png."""
    report = b.report
    report["ratios"] = rep.compute_ratios(b.results)
    report["onnxruntime"] = rep.onnxruntime_ratios(b.results)
    report["openvino"] = rep.onnxruntime_ratios(b.results, runtime="openvino")
    report["targets"] = rep.check_targets(report["ratios"], "eager")
    if b.device.type != "cpu":
        report["notes"].append(
            "the targets are defined for the 2-core CPU; on this device they are shown for information"
        )
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["wall_s"] = time.perf_counter() - t_start
    (b.out_dir / "benchmark.json").write_text(json.dumps(report, indent=1, default=str))
    md = rep.markdown_report(report)
    (b.out_dir / "benchmark.md").write_text(md)
    if b.config.chart:
        rep.bar_chart(report, b.out_dir / "benchmark.png")
    print(md)
    _log(
        f"wrote {b.out_dir / 'benchmark.json'}, benchmark.md"
        + (", benchmark.png" if b.config.chart else "")
        + f" in {report['wall_s']:.0f}s"
    )
    return report


def run(config: BenchConfig) -> dict[str, Any]:
    """The whole benchmark: every phase in turn; returns the report (also written to ``config.output``)."""
    t_start = time.perf_counter()
    b = start(config)
    drop_emulated_bf16(b)
    measure_matmul_peak(b)
    models = build_subjects(b)
    subjects = list(models)
    count_flops(b, models)
    check_consistency(b, models)
    time_inference(b, models)
    del models  # the training and compile workers build their own
    if b.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    time_training(b, subjects)
    measure_training_memory(b, subjects)
    time_compile(b)
    time_module(b)
    remeasure_matmul_peak(b)
    return write_report(b, t_start)
