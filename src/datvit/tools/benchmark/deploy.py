"""Deployment treatments — bf16 autocast and int8 (torchao), eager and compiled — against fp32: accuracy on a
trained checkpoint and speed (``datvit bench deploy``).

    datvit bench deploy --checkpoint demo_output/fashion_mnist/last.pth   # after `make demo`
    datvit bench deploy --checkpoint CKPT --speed-models dat_tiny,swin --speed-batch 32
    datvit bench deploy --treatments "fp32 eager,bf16 eager,bf16 compiled" --speed-models swin

For the checkpoint it evaluates the test split (the dataset the checkpoint was trained on) with each treatment —
fp32 eager, fp32 compiled with inductor freezing (:func:`datvit.optimize_for_inference`), bf16 autocast eager and
compiled (``dtype="bfloat16"``; CPUs with native bf16 and GPUs only), int8 eager and compiled — and prints top-1
and images/s of each. int8 is torchao's current API (``quantize_`` with
``Int8DynamicActivationInt8WeightConfig``: int8 weights, activations quantized per token at run time), applied to
every ``nn.Linear``, DAT's 1×1-conv projections included (:func:`datvit.deploy.quantize_int8`).
Then, for ``speed_models`` at 224×224 with random weights, the same four treatments are timed interleaved in
one process (``iters`` rounds, median).

The int8 treatments need ``pip install torchao`` (not a datvit dependency). Writes ``output``/deploy.json.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from . import common


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` quantized as ``optimize_for_inference(..., quantize="int8")`` does
    (:func:`datvit.deploy.quantize_int8`: DAT's 1×1-conv projections become nn.Linear, then torchao's int8)."""
    from datvit.deploy import quantize_int8 as quantize

    q = copy.deepcopy(model).eval()
    for p in q.parameters():
        p.requires_grad_(False)
    return quantize(q)


def treatments(model: nn.Module) -> dict[str, Callable[[], nn.Module]]:
    from datvit import optimize_for_inference

    return {
        "fp32 eager": lambda: copy.deepcopy(model).eval(),
        "fp32 compiled": lambda: optimize_for_inference(copy.deepcopy(model)),
        "bf16 eager": lambda: optimize_for_inference(
            copy.deepcopy(model), compile=False, freezing=False, dtype="bfloat16"
        ),
        "bf16 compiled": lambda: optimize_for_inference(copy.deepcopy(model), dtype="bfloat16"),
        "int8 eager": lambda: quantize_int8(model),
        "int8 compiled": lambda: optimize_for_inference(quantize_int8(model)),
    }


TREATMENTS = tuple(treatments(nn.Identity()))


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> tuple[float, float, int]:
    """(top-1 %, images/s, images). The speed counts full batches after the first: the first call compiles, and a
    smaller last batch is a new shape (a recompile for a compiled model)."""
    correct = count = timed = 0
    seconds = 0.0
    for i, (images, targets, _) in enumerate(loader):
        start = time.perf_counter()
        logits = model(images)
        if i and len(images) == loader.batch_size:
            seconds += time.perf_counter() - start
            timed += len(images)
        correct += (logits.argmax(1) == targets).sum().item()
        count += len(targets)
    return 100.0 * correct / count, timed / max(seconds, 1e-9), count


def checkpoint_accuracy(path: str, batch_size: int, chosen: tuple[str, ...] = TREATMENTS) -> dict:
    from datvit.data.loader import create_dataset, create_loader, resolve_dataset_kind
    from datvit.inference import eval_transform, load_model

    loaded = load_model(path)
    args = (loaded.checkpoint.training.get("args") or {}) if loaded.checkpoint else {}
    kind = resolve_dataset_kind(args.get("dataset"), args.get("data_dir"))
    split = args.get("val_split") or "test"
    dataset = create_dataset(
        kind,
        args.get("data_dir"),
        split,
        transform=eval_transform(loaded.data_config),
        image_mode="L" if loaded.model.in_chans == 1 else "RGB",
        class_names=loaded.class_names,
    )
    loader = create_loader(dataset, batch_size, training=False, workers=0)
    rows = {}
    for name, make in treatments(loaded.model).items():
        if name not in chosen:
            continue
        start = time.perf_counter()
        model = make()
        top1, ips, n = accuracy(model, loader)
        rows[name] = {
            "top1": top1,
            "images_per_s": ips,
            "images": n,
            "seconds_incl_compile": time.perf_counter() - start,
        }
        print(
            f"{loaded.name} {kind}/{split} {name:14s} top-1 {top1:6.2f}%  {ips:7.0f} img/s  "
            f"({rows[name]['seconds_incl_compile']:.0f} s with build/compile)",
            flush=True,
        )
    base = rows["fp32 eager"]["top1"]  # always measured: run() adds it
    for row in rows.values():
        row["top1_change"] = row["top1"] - base
    return {"checkpoint": path, "model": loaded.name, "dataset": kind, "split": split, "rows": rows}


@torch.no_grad()
def speed(models: list[str], batch: int, iters: int, chosen: tuple[str, ...] = TREATMENTS) -> dict:
    """Images/s of every chosen treatment of every model (random weights, 224×224), timed interleaved after two
    untimed calls each (the first compiles), and each against the model's fp32 eager."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    fns, build_s = {}, {}
    for m in models:
        base = common.build_model(common.subject_for(m), torch.device("cpu")).eval()
        for t, make in treatments(base).items():
            if t in chosen:
                start = time.perf_counter()
                model = make()
                model(x)
                model(x)
                fns[f"{m} {t}"] = lambda model=model: model(x)
                build_s[f"{m} {t}"] = time.perf_counter() - start
                print(f"built {m} {t} in {build_s[f'{m} {t}']:.0f} s", flush=True)
    times = common.time_interleaved(fns, 0, iters, torch.device("cpu"))
    out = {k: {"images_per_s": batch / statistics.median(ts), "build_s": build_s[k]} for k, ts in times.items()}
    for m in models:
        eager = out[f"{m} fp32 eager"]["images_per_s"]
        for t in chosen:
            row = out[f"{m} {t}"]
            row["vs_fp32_eager"] = row["images_per_s"] / eager
            print(
                f"{m:10s} {t:14s} {row['images_per_s']:7.1f} img/s  {row['vs_fp32_eager']:.2f}× fp32 eager  "
                f"(build {row['build_s']:.0f} s)"
            )
    return {"batch": batch, "iters": iters, "rows": out}


@dataclass(frozen=True, kw_only=True)
class DeployConfig:
    """What :func:`run` compares: the ``treatments`` (from :data:`TREATMENTS`; fp32 eager, the baseline, is always
    added) on the test split of ``checkpoint`` (if given) at ``batch_size``, and on ``speed_models`` (random
    weights, 224×224; empty: none) at ``speed_batch`` over ``iters`` interleaved rounds."""

    checkpoint: Optional[str] = None
    batch_size: int = 256
    speed_models: tuple[str, ...] = ("dat_tiny", "swin")
    speed_batch: int = 32
    iters: int = 5
    treatments: tuple[str, ...] = TREATMENTS
    output: str = common.DEFAULT_OUTPUT

    def __post_init__(self) -> None:
        # treatment names hold spaces: split on commas only
        names = self.treatments.split(",") if isinstance(self.treatments, str) else self.treatments
        object.__setattr__(self, "treatments", tuple(t.strip() for t in names if t.strip()))
        common.freeze_sequences(self, ("speed_models",))


def run(config: DeployConfig) -> dict:
    """Accuracy and speed of every chosen treatment, printed and written to ``config.output``/deploy.json (the
    result returned); ValueError for an unknown treatment, or int8 without torchao."""
    unknown = [t for t in config.treatments if t not in TREATMENTS]
    if unknown:
        raise ValueError(f"unknown treatments {unknown}; choose from {', '.join(TREATMENTS)}")
    chosen = tuple(t for t in TREATMENTS if t in config.treatments or t == "fp32 eager")

    from datvit.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    # This process compiles the same model code many times (fp32 and int8, several models and batch sizes); past
    # dynamo's default of 8 compiled versions per code object it silently runs the rest eagerly (and recompiles
    # for minutes), which would time a compiled treatment as eager.
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.accumulated_cache_size_limit = 512
    result = {"torch": torch.__version__, "treatments": list(chosen)}
    if any(t.startswith("int8") for t in chosen):
        try:
            import torchao
        except ImportError:
            raise ValueError(
                "the int8 treatments need torchao: pip install torchao (or leave them out: --treatments)"
            ) from None
        result["torchao"] = torchao.__version__
    if config.checkpoint:
        result["accuracy"] = checkpoint_accuracy(config.checkpoint, config.batch_size, chosen)
    if config.speed_models:
        result["speed"] = speed(list(config.speed_models), config.speed_batch, config.iters, chosen)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'deploy.json'}")
    return result
