"""``datvit bench``: the speed/memory benchmark (:mod:`datvit.tools.benchmark.run`). The harness is part of the
package, so this works from any directory."""
from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  datvit bench                                    # full CPU run (20-40 min on 2 cores): tables, JSON, PNG
  datvit bench --quick --models dat_tiny,swin     # a look in a few minutes
  datvit bench --no-compile --models dat_tiny,swin --paths fast --batch-sizes 32 --train-batch-sizes 32 \\
      --train-runs 3                             # DAT-T vs Swin-T, training steps interleaved in 3 processes
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from datvit.tools.benchmark.run import add_arguments

    p = subparsers.add_parser(
        "bench", help="benchmark DAT (fast and reference paths) against Swin-T and ConvNeXt-T",
        description="Inference and training throughput, peak memory, torch.compile and GFLOP/s of DAT / DAT++ "
                    "(fast and reference paths) side by side with timm's Swin-T and ConvNeXt-T. Writes "
                    "benchmark.json, benchmark.md and benchmark.png into --output. See docs/benchmarks.md.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datvit.tools.benchmark.run import run as run_benchmark

    from ._errors import run_with_user_errors

    args.command_line = "datvit bench " + " ".join(sys.argv[2:])
    return run_with_user_errors("bench", lambda: run_benchmark(args))
