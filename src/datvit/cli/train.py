"""``datvit train``: train a DAT / DAT++ variant (registered, preset or custom) on an image folder or the built-in
Fashion-MNIST, on one process or under ``torchrun``. Flags are timm ``train.py``'s; ``-c FILE.yaml`` sets defaults."""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional, Sequence

from ._errors import run_with_user_errors
from ._run_args import add_train_arguments, settings_layers, show_defaults

EPILOG = """examples:
  datvit train                                        # a small DAT on Fashion-MNIST (offline)
  datvit train -c demo_fashion_mnist                  # the demo's recipe (shipped with datvit)
  datvit train --data-dir /data/imagenet --model dat_tiny -b 128 --amp   # the papers' ImageNet recipe
  torchrun --nproc_per_node 8 -m datvit train --data-dir /data/imagenet --model datpp_tiny
  datvit train --resume auto --experiment my-run      # continue exactly where my-run stopped
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a DAT / DAT++ model",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    add_train_arguments(p)
    from ..train.config import TrainConfig

    show_defaults(p, TrainConfig)
    p.set_defaults(func=lambda args: run(args, p))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, defaults: Optional[Mapping[str, Any]] = None) -> int:
    """Train; problems the user can fix (missing data, bad config) end with a one-line message and exit code 2."""
    from ..train.config import TrainConfig
    from ..train.engine import train

    layers = settings_layers(parser, args, TrainConfig, defaults)
    return run_with_user_errors("train", lambda: train(layers))


def train_layers(argv: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The settings layers of ``datvit train ARGV`` (for Python callers and tests: ``train(train_layers(argv))``)."""
    from ..train.config import TrainConfig

    parser = argparse.ArgumentParser(prog="datvit train", argument_default=argparse.SUPPRESS)
    add_train_arguments(parser)
    return settings_layers(parser, parser.parse_args(list(argv)), TrainConfig)
