"""``datvit eval``: top-1 / top-5 / loss of a checkpoint (datvit's or the authors') on an image folder or the
built-in Fashion-MNIST, with timm's resize + center-crop (crop 0.875, bicubic) at any resolution.
Flags are timm ``validate.py``'s."""
from __future__ import annotations

import argparse
import os
import sys

from ..train.evaluation import add_eval_arguments

EPILOG = """examples:
  datvit eval --checkpoint output/train/my-run/best.pth          # on the data it was trained on
  datvit eval --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --data-dir /data/imagenet --split val
  datvit eval --checkpoint best.pth --data-dir /data/imagenet --img-size 288 --crop-pct 1.0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint (top-1, top-5, loss)", description=__doc__,
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.fashion_mnist import DatasetCorruptError, DatasetNotFoundError
    from ..models import CheckpointError
    from ..train.engine import TrainingError
    from ..train.evaluation import run_eval

    try:
        run_eval(args)
    except (DatasetNotFoundError, DatasetCorruptError, TrainingError, CheckpointError, FileNotFoundError,
            ValueError) as e:
        if os.environ.get("DATVIT_DEBUG"):
            raise
        print(f"datvit eval: error: {e}", file=sys.stderr)
        return 2
    return 0
