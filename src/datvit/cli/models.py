"""``datvit models``: the registered variants, their parameter counts and pretrained configs."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered DAT / DAT++ variants",
        description="List the registered variants with parameters and default input size.",
    )
    p.add_argument("--count-params", action="store_true", help="build each model to count its parameters (slower)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import timm

    import datvit
    from datvit.models import count_parameters

    for name in datvit.list_models():
        cfg = timm.models.get_pretrained_cfg(name)
        line = f"{name:16s} input {cfg.input_size[1]}×{cfg.input_size[2]}  crop {cfg.crop_pct}"
        if args.count_params:
            model = timm.create_model(name)
            line += f"  {count_parameters(model) / 1e6:.2f}M params"
        print(line)
    return 0
