"""Mixed precision that is only switched on where it helps.

GPUs: bf16 (no loss scaling) or fp16 (with a GradScaler). CPUs: bf16 only when the processor computes bf16
natively (AVX512-BF16 or AMX); on others (e.g. AVX2-only Zen 3) a bf16 matmul is hundreds of times slower than
fp32, so ``--amp`` is refused there with a message and the run continues in fp32. fp16 on CPU is always refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The processor's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return flags


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16."""
    return bool(cpu_flags(cpuinfo_path) & NATIVE_BF16_FLAGS)


@dataclass
class AmpPlan:
    """What autocast will do: ``enabled``, its ``dtype``, whether fp16 loss scaling is needed, and why."""

    enabled: bool
    dtype: torch.dtype
    use_scaler: bool
    message: Optional[str] = None


def resolve_amp(
    device: torch.device, requested: bool, dtype_name: str = "bfloat16", native_bf16: Optional[bool] = None
) -> AmpPlan:
    """Decide mixed precision for ``device``; ``message`` explains a refusal (the run goes on in fp32)."""
    dtype = torch.float16 if dtype_name in ("float16", "fp16", "half") else torch.bfloat16
    if not requested:
        return AmpPlan(False, torch.float32, False)
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return AmpPlan(True, torch.float16, True, "this GPU has no bf16: using fp16 with loss scaling")
        return AmpPlan(True, dtype, dtype == torch.float16)
    if device.type == "cpu":
        if dtype == torch.float16:
            return AmpPlan(
                False,
                torch.float32,
                False,
                "--amp-dtype float16 is not supported on CPU: training in fp32 (use bfloat16 on a CPU "
                "with AVX512-BF16/AMX)",
            )
        if native_bf16 is None:
            native_bf16 = cpu_has_native_bf16()
        if not native_bf16:
            return AmpPlan(
                False,
                torch.float32,
                False,
                "--amp refused: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), where a bf16 "
                "matmul is far slower than fp32: training in fp32",
            )
        return AmpPlan(True, torch.bfloat16, False)
    return AmpPlan(False, torch.float32, False, f"--amp is not supported on {device.type}: training in fp32")


def autocast(device: torch.device, plan: AmpPlan) -> contextlib.AbstractContextManager:
    """The autocast context of ``plan`` (a no-op context when disabled)."""
    if not plan.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=plan.dtype)
