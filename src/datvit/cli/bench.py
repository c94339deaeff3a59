"""``datvit bench``: the speed/memory benchmark of ``benchmarks/`` (same options as ``python -m benchmarks.run``).

The benchmark lives in the repository's top-level ``benchmarks`` package, next to ``src/``; with an editable install
it is found from here even when the current directory is elsewhere.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _benchmarks_run():
    root = Path(__file__).resolve().parents[3]   # src/datvit/cli/bench.py → repository root
    if (root / "benchmarks" / "run.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks.run")
    except ModuleNotFoundError as exc:
        raise SystemExit("datvit bench needs the repository checkout (benchmarks/ next to src/); run it from a "
                         f"source checkout with an editable install ({exc})")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark DAT (fast and reference paths) against Swin-T and ConvNeXt-T",
        description="Inference and training throughput, peak memory, torch.compile and GFLOP/s of DAT / DAT++ "
                    "(fast and reference paths) side by side with timm's Swin-T and ConvNeXt-T. Writes "
                    "benchmark.json, benchmark.md and benchmark.png into --out. See docs/benchmarks.md.")
    try:
        _benchmarks_run().add_arguments(p)
    except SystemExit as exc:   # keep `datvit --help` working outside a checkout
        p.set_defaults(_bench_error=str(exc))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_bench_error", None):
        print(args._bench_error, file=sys.stderr)
        return 2
    from ._errors import run_with_user_errors

    args.command_line = "datvit bench " + " ".join(sys.argv[2:])

    def bench() -> None:
        _benchmarks_run().run(args)

    return run_with_user_errors("bench", bench)
