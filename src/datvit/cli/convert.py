"""``datvit convert``: a checkpoint (the authors' ``.pth`` or datvit's) → ``OUTPUT/model.safetensors`` + a
timm-style ``config.json``, the layout of timm models on the Hugging Face hub.

Load it back with ``datvit.inference.load_model(OUTPUT)`` / ``datvit predict --checkpoint OUTPUT``, or through
timm: ``timm.create_model(cfg["architecture"], pretrained=True,
pretrained_cfg_overlay=dict(file="OUTPUT/model.safetensors"), **cfg["model_args"])`` with ``cfg`` the
``config.json``. The weights are the model's state_dict after datvit's strict, checked load (wrapper prefixes
removed, position tables at the model's size); config.json records the architecture, classes, preprocessing,
datvit's model arguments (custom configurations rebuild) and the class names when the checkpoint has them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._errors import run_with_user_errors
from ._run_args import add_trust_checkpoint_argument

EPILOG = """examples:
  datvit convert --checkpoint dat_tiny_in1k_224.pth --output hub/dat_tiny --model dat_tiny
  datvit convert --checkpoint output/train/my-run/best.pth --output hub/my-run --use-ema
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="checkpoint → model.safetensors + config.json (timm / HF hub layout)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="the authors' .pth (give --model) or a datvit checkpoint (also accepted as the first argument)",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        help="directory to write model.safetensors and config.json into (also accepted as the second argument)",
    )
    p.add_argument("positional", nargs="*", metavar="SRC DST_DIR", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--img-size", type=int, default=None, help="build the model for this input size (tables resized)")
    p.add_argument("--use-ema", action="store_true", help="convert the checkpoint's EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace model.safetensors / config.json in --output")
    add_trust_checkpoint_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("convert", lambda: convert(args))


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    """--checkpoint and --output, or the two positional arguments of the older ``datvit convert SRC DST_DIR``."""
    rest = list(args.positional)
    src = args.checkpoint or (rest.pop(0) if rest else None)
    dst = args.output or (rest.pop(0) if rest else None)
    if rest or not src or not dst:
        raise ValueError("give --checkpoint FILE and --output DIR (or SRC DST_DIR)")
    return src, dst


def convert(args: argparse.Namespace) -> Path:
    from ..inference import hub_config, load_model, save_hub_directory
    from ..inference.hub import CONFIG_NAME, WEIGHTS_NAME
    from ..models import count_parameters

    src, dst = _paths(args)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"--output {dst} exists and is not a directory")
    existing = [dst / n for n in (WEIGHTS_NAME, CONFIG_NAME) if (dst / n).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{existing[0]} already exists: pass --overwrite to replace it, or choose another --output")
    loaded = load_model(
        src, args.model, img_size=args.img_size, use_ema=args.use_ema, trust_checkpoint=args.trust_checkpoint
    )
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --output {dst}: {e.strerror or e}") from None
    config = hub_config(loaded.arch, loaded.data_config, loaded.model, loaded.class_names)
    weights, config_path = save_hub_directory(dst, loaded.model.state_dict(), config)
    n = count_parameters(loaded.model)
    print(
        f"wrote {weights} ({n / 1e6:.2f}M parameters) and {config_path} "
        f"(architecture {config['architecture']}, {config['num_classes']} classes)",
        file=sys.stderr,
    )
    return dst
