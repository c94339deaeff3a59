"""The inference-speed flags of ``datvit eval`` and ``datvit predict`` (``--compile``, ``--compile-mode``,
``--int8``, ``--amp``) and how they become a :class:`datvit.deploy.InferenceOptimization`."""

from __future__ import annotations

import argparse
from typing import Optional

from torch import nn

from ..deploy import COMPILE_MODES, InferenceOptimization, optimize_for_inference


def add_inference_optimization_arguments(parser: argparse.ArgumentParser, amp: bool = True) -> None:
    """``--compile`` (torch.compile with inductor freezing), ``--compile-mode``, ``--int8`` and (with ``amp``;
    ``datvit eval`` has its own) ``--amp``: bf16 autocast."""
    g = parser.add_argument_group("inference speed")
    if amp:
        g.add_argument(
            "--amp",
            action="store_true",
            help="bf16 autocast (GPUs; CPUs with native bf16, AVX512-BF16 or AMX): with --compile "
            "dat_tiny runs ~1.8x its float32 speed on such a CPU; logits to bf16 accuracy",
        )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model with inductor freezing (datvit.optimize_for_inference): faster "
        "batches after a one-off compile of a minute or more",
    )
    g.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode with --compile (max-autotune: tunes kernels, longer compile)",
    )
    g.add_argument(
        "--int8",
        action="store_true",
        help="int8 weights and activations in every Linear (torchao, pip install 'datvit[int8]'); with "
        "--compile dat_tiny runs ~1.5x its float32 eager speed, accuracy within ~0.1 point on the "
        "demo's model",
    )


def optimization_from_args(args: argparse.Namespace, amp: bool = True) -> Optional[InferenceOptimization]:
    """What :func:`add_inference_optimization_arguments` parsed (None without --compile, --int8 or --amp);
    ``amp=False`` for a command whose ``--amp`` is its own autocast (``datvit eval``)."""
    compile_, int8 = getattr(args, "compile", False), getattr(args, "int8", False)
    bf16 = amp and getattr(args, "amp", False)
    if not (compile_ or int8 or bf16):
        return None
    return InferenceOptimization(
        compile=compile_,
        freezing=compile_,
        mode=getattr(args, "compile_mode", "default"),
        quantize="int8" if int8 else None,
        dtype="bfloat16" if bf16 else None,
    )


def optimize_from_args(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``model`` with what the flags ask for applied (unchanged without --compile, --int8 or --amp)."""
    optimization = optimization_from_args(args)
    return model if optimization is None else optimize_for_inference(model, optimization)
