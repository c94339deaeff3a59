"""``datvit demo`` (``make demo``): train a small DAT on Fashion-MNIST offline, evaluate it on the 10,000 test
images, and write the checkpoint, curves and a markdown report under ``demo_output/``.

It runs ``datvit train -c demo_fashion_mnist`` (the YAML shipped in ``datvit/configs/``) and ``datvit eval``; options
it does not know go to ``datvit train`` (e.g. ``--epochs 1`` for a quicker look). It lives in ``cli/`` because it
drives the other commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..utils.files import atomic_write_text

DEFAULT_CONFIG = "demo_fashion_mnist"  # datvit/configs/demo_fashion_mnist.yaml (package data)

EPILOG = """examples:
  datvit demo                       # ~5½ minutes on 2 CPU cores: 3 epochs of dat_nano, then the test set
  datvit demo --epochs 1            # options datvit demo does not know go to datvit train
  datvit demo --output /tmp/demo --data-dir DIR   # Fashion-MNIST IDX files elsewhere
"""


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_seconds(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"


def write_report(run_dir: Path, results: dict[str, Any], timings: dict[str, float], command: str) -> Path:
    """report.md beside the checkpoints: the result, the setup, the per-epoch table and the plots."""
    from ..inference import read_datvit_checkpoint
    from ..train.metrics import read_summary

    ckpt = read_datvit_checkpoint(run_dir / "last.pth")
    args, kwargs = ckpt.training["args"], ckpt.arch["kwargs"]
    rows = read_summary(run_dir / "summary.csv")
    lines = [
        "# datvit demo: DAT on Fashion-MNIST (CPU, offline)",
        "",
        f"**Test accuracy {results['top1']:.2f}% top-1** ({results['top5']:.2f}% top-5, loss {results['loss']:.4f}) "
        f"on the {results['images']:,} Fashion-MNIST test images, after {_fmt_seconds(timings['total'])} wall time "
        f"in all ({_fmt_seconds(timings['train'])} of training, {len(rows)} epochs).",
        "",
        f"Command: `{command}`",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
        "threads), fp32 |",
        f"| model | {ckpt.arch['name']}: DAT {kwargs.get('generation', 'v1')}, {results['param_count'] / 1e6:.2f}M "
        f"parameters, dims {kwargs['dims']}, depths {kwargs['depths']}, blocks {kwargs['stage_spec']}, "
        f"windows {kwargs['window_sizes']}, patch {kwargs['patch_size']} |",
        f"| input | {args['img_size']}×{args['img_size']}, {args['in_chans']} channel(s) (28×28 resized, "
        f"{args['train_interpolation']}) |",
        f"| recipe | {args['opt']} lr {args['lr']:g}, weight decay {args['weight_decay']}, {args['sched']} with "
        f"{args['warmup_epochs']} warm-up epochs, batch {args['batch_size']}, label smoothing {args['smoothing']}, "
        f"drop path {kwargs.get('drop_path_rate', 0)}, "
        f"{'horizontal flips p=' + format(args['hflip'], 'g') if args.get('hflip') else 'no flips'}, "
        f"clip-grad {args['clip_grad']} |",
        f"| evaluation | last.pth (final weights; no model selection on the test set), "
        f"{results['img_size']}px, crop {results['crop_pct']} |",
        "",
        "## Per epoch",
        "",
        "| epoch | train loss | test loss | test top-1 | test top-5 | lr | images/s | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['epoch']} | {float(r['train_loss']):.4f} | {float(r['eval_loss']):.4f} | "
            f"{float(r['eval_top1']):.2f} | {float(r['eval_top5']):.2f} | {float(r['lr']):.2e} | "
            f"{float(r['images/s']):.0f} | {float(r['seconds']):.0f} |"
        )
    lines += [
        "",
        "## Curves",
        "",
        "![loss](loss.png)",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![learning rate](lr.png)",
        "",
        "## Files",
        "",
        "`last.pth` / `best.pth` / `checkpoint-<epoch>.pth` (datvit checkpoints: `datvit eval --checkpoint "
        "last.pth`), `summary.csv`, `args.yaml` (the full configuration), `test_results.json`, the PNG curves.",
        "",
    ]
    path = run_dir / "report.md"
    atomic_write_text("\n".join(lines), path)
    return path


class _DemoParser(argparse.ArgumentParser):
    """Keeps the options it does not know (they go to ``datvit train``) instead of rejecting them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        namespace.train_args = list(getattr(namespace, "train_args", None) or []) + list(extra)
        return namespace, []


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="datvit train YAML: a file, or the name of a shipped config (default: %(default)s)",
    )
    parser.add_argument("--output", default="demo_output", help="parent directory of the run")
    parser.add_argument("--experiment", default="fashion_mnist", help="run directory name")
    parser.set_defaults(train_args=[])
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    original = subparsers._parser_class
    subparsers._parser_class = _DemoParser
    try:
        p = subparsers.add_parser(
            "demo",
            help="train and evaluate a small DAT on Fashion-MNIST (offline, CPU)",
            description=__doc__,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    finally:
        subparsers._parser_class = original
    add_demo_arguments(p)
    p.set_defaults(func=run)


def clear_previous_runs(runs_dir: Path, names: Sequence[str]) -> list[Path]:
    """Remove the run directories a previous demo left under ``runs_dir`` (saying so). Otherwise the training
    engine keeps an old run and writes the new one to ``<name>-1``, while the demo's report reads ``<name>``."""
    removed = []
    for name in names:
        run_dir = runs_dir / name
        if run_dir.exists():
            print(f"removing the previous demo run {run_dir}", flush=True)
            shutil.rmtree(run_dir)
            removed.append(run_dir)
    return removed


def run(args: argparse.Namespace) -> int:
    from .main import main as cli_main

    run_dir = Path(args.output) / args.experiment
    clear_previous_runs(Path(args.output), [args.experiment])
    start = time.perf_counter()
    train_argv = [
        "train",
        "-c",
        args.config,
        "--output",
        args.output,
        "--experiment",
        args.experiment,
        *args.train_args,
    ]
    code = cli_main(train_argv)
    if code:
        return code
    trained = time.perf_counter()
    results_file = run_dir / "test_results.json"
    code = cli_main(
        ["eval", "--checkpoint", str(run_dir / "last.pth"), "--split", "test", "--output", str(results_file)]
    )
    if code:
        return code
    end = time.perf_counter()
    results = json.loads(results_file.read_text())
    timings = {"train": trained - start, "eval": end - trained, "total": end - start}
    results["wall_seconds"] = timings
    atomic_write_text(json.dumps(results, indent=2), results_file)
    command = "datvit " + " ".join(train_argv)
    report = write_report(run_dir, results, timings, command)
    print(
        f"\ndemo: Fashion-MNIST test accuracy {results['top1']:.2f}% (top-5 {results['top5']:.2f}%) in "
        f"{_fmt_seconds(timings['total'])}; report {report}"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m datvit.cli.demo`` = ``datvit demo``."""
    from .main import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
