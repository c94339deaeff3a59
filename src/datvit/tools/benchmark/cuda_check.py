"""The GPU checks as one command, ``datvit bench cuda-check``, for a machine with a GPU (never in CI). Try it on
CPU first:

    datvit bench cuda-check --device cpu --img-size 64 --no-speed        # the correctness part
    PYTHONPATH=src python -m datvit bench cuda-check --output "$OUT"     # on the GPU machine, from a checkout

1. Correctness, per model (dat_tiny and datpp_tiny, random weights, no stochastic depth): the fast path against
   the reference path (the authors' algorithm) in float32 with TF32 off — logits (relative max error, goal 1e-4)
   and the gradient of every parameter (relative norm error per parameter; ``rpb``, read through
   flex_attention's ``score_mod`` on CUDA, and ``rpe_table``, read through ``grid_sample``, listed by name) —
   then bf16 autocast on the fast path: finite, and its logits against float32.
2. Speed (unless ``speed=False``, ``--no-speed``): ``datvit bench`` on the same device with the arguments in
   ``speed_args`` (default: bf16 and float32 training and inference at batch 128 for dat_tiny, datpp_tiny,
   Swin-T and ConvNeXt-T, peak memory, torch.compile of dat_tiny and Swin-T), in a child process with a time
   limit, its report written next to this command's.

Writes ``output``/cuda_check.json after every model (a run cut short keeps what it finished) and prints a summary.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import common

SPEED_ARGS = (
    "--models dat_tiny,datpp_tiny,swin,convnext --paths fast --batch-sizes 128 --train-batch-sizes 128 "
    "--modes eager,bf16,bf16-compile --compile-models dat_tiny,swin --compile-kinds inference,train "
    "--compile-batch-sizes 128 --train-runs 2 --no-module --onnx-models '' --compile-timeout 200"
)


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """‖a − b‖ / max(‖b‖, floor) in float64. The floor (a small fraction of the largest gradient) keeps gradients
    that are zero in exact arithmetic — the key projections' biases: softmax ignores a score shift shared by all
    keys — from turning rounding noise into a large relative error."""
    a, b = a.double(), b.double()
    return (a - b).norm().item() / max(b.norm().item(), floor, 1e-30)


def check_model(name: str, device: torch.device, batch: int, img_size: int) -> dict:
    """Fast vs reference (float32 logits and every gradient) and bf16 autocast for one model."""
    import timm

    import datvit  # noqa: F401  (registers the models)
    from datvit.layers import NeighborhoodAttention2D

    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0, img_size=img_size).to(device).eval()
    with torch.no_grad():  # offsets and position biases that are not zero, so the sampling paths matter
        for n, p in model.named_parameters():
            if n.endswith(("conv_offset.3.weight", "rpe_table", "rpb", "relative_position_bias_table")):
                p.normal_(0, 0.05)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out: dict = {"model": name, "batch": batch, "img_size": img_size}
    flex = [
        m._flex_enabled(torch.empty(0, device=device))
        for m in model.modules()
        if isinstance(m, NeighborhoodAttention2D)
    ]
    out["neighborhood_kernel"] = ("flex_attention" if all(flex) else "tiled") if flex else "none"

    grads = {}
    logits = {}
    for reference in (False, True):
        model.set_reference(reference)
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        y = model(x)
        y.float().logsumexp(1).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        key = "reference" if reference else "fast"
        out[f"{key}_fwd_bwd_s"] = time.perf_counter() - start
        logits[key] = y.detach()
        grads[key] = {n: p.grad.detach().clone() if p.grad is not None else None for n, p in params}
    model.set_reference(False)
    ref_logits = logits["reference"]
    out["logits_rel_max"] = ((logits["fast"] - ref_logits).abs().max() / ref_logits.abs().max()).item()
    missing = [n for n, _ in params if grads["fast"][n] is None or grads["reference"][n] is None]
    largest = max((g.double().norm().item() for g in grads["reference"].values() if g is not None), default=0.0)
    rel = {n: _rel(grads["fast"][n], grads["reference"][n], 1e-3 * largest) for n, _ in params if n not in missing}
    worst = sorted(rel.items(), key=lambda kv: -kv[1])
    out["grad_missing"] = missing
    out["grad_rel_max"] = worst[0][1] if worst else None
    out["grad_rel_worst"] = worst[:5]
    out["grad_rel_position_biases"] = {n: v for n, v in rel.items() if n.endswith(("rpb", "rpe_table"))}

    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = model(x)
    out["bf16_finite"] = bool(torch.isfinite(bf16).all())
    out["bf16_logits_rel_max"] = ((bf16.float() - fp32).abs().max() / fp32.abs().max()).item()
    out["bf16_top1_agreement"] = (bf16.float().argmax(1) == fp32.argmax(1)).float().mean().item()
    out["pass"] = bool(
        out["logits_rel_max"] < 1e-4
        and not missing
        and (out["grad_rel_max"] or 0) < 1e-3
        and out["bf16_finite"]
        and out["bf16_logits_rel_max"] < 0.05
    )
    return out


@dataclass(frozen=True, kw_only=True)
class CudaCheckConfig:
    """What :func:`run` checks: ``models`` at ``batch_size`` and ``img_size`` on ``device``, then (with ``speed``)
    ``datvit bench`` with ``speed_args`` (its flags; --device and --output are added) within ``speed_timeout``
    seconds; the report goes to ``output``/cuda_check.json."""

    device: str = "cuda"
    models: tuple[str, ...] = ("dat_tiny", "datpp_tiny")
    batch_size: int = 4
    img_size: int = 224
    speed: bool = True
    speed_args: str = SPEED_ARGS
    speed_timeout: float = 420.0
    output: str = common.DEFAULT_OUTPUT + "/cuda_check"

    def __post_init__(self) -> None:
        common.freeze_sequences(self, ("models",))


def run(config: CudaCheckConfig) -> int:
    """The checks; 0 when every model passes, 1 otherwise. ValueError for a CUDA device on a machine without
    one."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device here (try --device cpu for the correctness part)")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 comparisons at 1e-4 need true float32 GEMMs
    torch.backends.cudnn.allow_tf32 = False
    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": common.machine_info(device, torch.get_num_threads()), "models": []}

    def save() -> None:
        (out_dir / "cuda_check.json").write_text(json.dumps(report, indent=2))

    for name in config.models:
        try:
            row = check_model(name, device, config.batch_size, config.img_size)
        except Exception as e:  # keep going: the other model and the speed part still say something
            row = {"model": name, "error": f"{type(e).__name__}: {e}", "pass": False}
        report["models"].append(row)
        save()
        print(json.dumps(row), flush=True)

    if config.speed:
        cmd = [
            sys.executable,
            "-m",
            "datvit",
            "bench",
            *shlex.split(config.speed_args),
            "--device",
            str(device),
            "--output",
            str(out_dir / "bench"),
        ]
        print("speed:", " ".join(shlex.quote(c) for c in cmd), flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=config.speed_timeout, env=dict(os.environ)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        report["speed"] = {"command": cmd, "returncode": rc, "seconds": time.perf_counter() - start}
        save()
    ok = all(m.get("pass") for m in report["models"])
    print(f"cuda-check: {'PASS' if ok else 'FAIL'} — {out_dir / 'cuda_check.json'}")
    return 0 if ok else 1
