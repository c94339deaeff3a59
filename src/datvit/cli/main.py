"""The ``datvit`` command line: one entry point, one module per subcommand.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed arguments, returning an exit code). Add new modules to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# (module under datvit.cli, one-line help) — imported lazily so `datvit --help` stays fast.
SUBCOMMANDS: dict[str, str] = {
    "models": "list the registered DAT / DAT++ variants with their size",
    "train": "train a DAT / DAT++ model on an image folder or the built-in Fashion-MNIST (torchrun for DDP)",
    "eval": "top-1 / top-5 / loss of a checkpoint on an image folder or the built-in Fashion-MNIST",
    "bench": "benchmark speed, memory and GFLOP/s against the reference path, Swin-T and ConvNeXt-T",
    "visualize": "draw where the deformable attention samples its keys, as a PNG over an image",
    "predict": "top-k classes of images (files, directories, globs) from any checkpoint",
    "convert": "a checkpoint → model.safetensors + config.json (timm / Hugging Face hub layout)",
    "demo": "train a small DAT on Fashion-MNIST offline, evaluate it, write checkpoint, plots and report",
    "flops": "parameters and FLOPs (multiply-adds) per stage, as the papers count them",
    "det": "detection / instance segmentation with a DAT backbone (Mask R-CNN, RetinaNet): train, eval, predict",
    "seg": "semantic segmentation with a DAT backbone (UperNet, Semantic FPN): train, eval, predict",
    "demo-dense": "train DAT and CNN detectors/segmenters on generated scenes offline, write a comparison report",
    "export": "export a model to ONNX, torch.export (.pt2) or TorchScript, checked against eager",
    "experiment": "run a declared grid of training runs (axes × seeds), resumable; report mean ± std, 95% CIs",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datvit",
        description="Deformable Attention Transformer (DAT, DAT++): train, evaluate, benchmark and inspect models.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of the one-line message (also: DATVIT_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"datvit.cli.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # freed tensor memory stays in malloc's heap: no page faults on every batch (DATVIT_CPU_ALLOCATOR=system: off)
    from ..runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if not args.debug:
        return int(args.func(args) or 0)
    # read by datvit.cli._errors, and inherited by DataLoader workers and torchrun ranks; only for this command
    # (main() is also called in-process, e.g. by the demo and the tests)
    previous = os.environ.get("DATVIT_DEBUG")
    os.environ["DATVIT_DEBUG"] = "1"
    try:
        return int(args.func(args) or 0)
    finally:
        if previous is None:
            del os.environ["DATVIT_DEBUG"]
        else:
            os.environ["DATVIT_DEBUG"] = previous


if __name__ == "__main__":
    sys.exit(main())
