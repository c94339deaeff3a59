"""``datvit eval``: top-1 / top-5 / loss of a checkpoint (datvit's or the authors') on an image folder or the
built-in Fashion-MNIST, with timm's resize + center-crop (crop 0.875, bicubic) at any resolution.
Flags are timm ``validate.py``'s."""

from __future__ import annotations

import argparse

from ..train.config import default_workers
from ._deploy_args import add_inference_optimization_arguments, optimization_from_args
from ._errors import run_with_user_errors
from ._run_args import (
    add_evaluation_output_arguments,
    add_trust_checkpoint_argument,
    add_workers_argument,
    config_from_args,
)

EPILOG = """examples:
  datvit eval --checkpoint output/train/my-run/best.pth          # on the data it was trained on
  datvit eval --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --data-dir /data/imagenet --split val
  datvit eval --checkpoint best.pth --data-dir /data/imagenet --img-size 288 --crop-pct 1.0
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (top-1, top-5, loss)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_eval_arguments(p)
    p.set_defaults(func=run)


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """timm ``validate.py``'s flag names."""
    add_inference_optimization_arguments(p, amp=False)  # eval's own --amp autocasts around the model
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="datvit checkpoint (last.pth, best.pth, ...) or the authors' .pth (then give --model)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="variant for checkpoints that do not record it (the authors' files), e.g. dat_tiny",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="ImageNet-style folder (its --split subfolder, or the class folders themselves) or the "
        "Fashion-MNIST files; default: the checkpoint's training data, else the built-in "
        "Fashion-MNIST",
    )
    p.add_argument("--dataset", default=None, help="'fashion_mnist' or 'folder' (default: guessed)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's validation split, 'val')")
    p.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="center-crop ratio (default 0.875)")
    p.add_argument("--interpolation", default=None, help="resize interpolation (default bicubic)")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: from the weights)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: from the weights)")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    add_trust_checkpoint_argument(p)
    add_workers_argument(p, default_workers())
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision (GPU; CPU only with native bf16)",
    )
    p.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    add_evaluation_output_arguments(p)
    return p


def eval_config(args: argparse.Namespace):
    """The parsed flags as the library's :class:`datvit.train.evaluation.EvalConfig`."""
    from ..train.evaluation import EvalConfig

    return config_from_args(EvalConfig, args, optimization=optimization_from_args(args, amp=False))


def run(args: argparse.Namespace) -> int:
    """Evaluate; problems the user can fix end with a one-line message and exit code 2."""
    from ..train.evaluation import run_eval

    return run_with_user_errors("eval", lambda: run_eval(eval_config(args)))
