"""``datvit train``: train a DAT / DAT++ variant (registered, preset or custom) on an image folder or the built-in
Fashion-MNIST, on one process or under ``torchrun``. Flags are timm ``train.py``'s; ``-c FILE.yaml`` sets defaults."""
from __future__ import annotations

import argparse

from ..train.config import ConfigFileParser, build_parser
from ._errors import run_with_user_errors

EPILOG = """examples:
  datvit train                                        # a small DAT on Fashion-MNIST (offline)
  datvit train -c demo_fashion_mnist                  # the demo's recipe (shipped with datvit)
  datvit train --data-dir /data/imagenet --model dat_tiny -b 128 --amp   # the papers' ImageNet recipe
  torchrun --nproc_per_node 8 -m datvit train --data-dir /data/imagenet --model datpp_tiny
  datvit train --resume auto --experiment my-run      # continue exactly where my-run stopped
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    # The train parser reads -c/--config YAML defaults while parsing its own arguments.
    original = subparsers._parser_class
    subparsers._parser_class = ConfigFileParser
    try:
        p = subparsers.add_parser("train", help="train a DAT / DAT++ model",
                                  description=__doc__, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    finally:
        subparsers._parser_class = original
    build_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; problems the user can fix (missing data, bad config) end with a one-line message and exit code 2."""
    from ..train.engine import train

    return run_with_user_errors("train", lambda: train(args))
