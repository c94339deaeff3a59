"""``datvit eval``: top-1 / top-5 / loss of a checkpoint (datvit's or the authors') on an image folder or the
built-in Fashion-MNIST, with timm's resize + center-crop (crop 0.875, bicubic) at any resolution.
Flags are timm ``validate.py``'s."""
from __future__ import annotations

import argparse

from ..train.evaluation import add_eval_arguments
from ._errors import run_with_user_errors

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
    """Evaluate; problems the user can fix end with a one-line message and exit code 2."""
    from ..train.evaluation import run_eval

    return run_with_user_errors("eval", lambda: run_eval(args))
