"""``datvit convert``: a checkpoint (the authors' ``.pth`` or datvit's) → ``DST_DIR/model.safetensors`` + a
timm-style ``config.json``, the layout of timm models on the Hugging Face hub.

Load it back with ``datvit.inference.load_model(DST_DIR)`` / ``datvit predict --checkpoint DST_DIR``, or through
timm: ``timm.create_model(cfg["architecture"], pretrained=True,
pretrained_cfg_overlay=dict(file="DST_DIR/model.safetensors"), **cfg["model_args"])`` with ``cfg`` the
``config.json``. The weights are the model's state_dict after datvit's strict, checked load (wrapper prefixes
removed, position tables at the model's size); config.json records the architecture, classes, preprocessing,
datvit's model arguments (custom configurations rebuild) and the class names when the checkpoint has them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._errors import run_with_user_errors

EPILOG = """examples:
  datvit convert dat_tiny_in1k_224.pth hub/dat_tiny --model dat_tiny
  datvit convert output/train/my-run/best.pth hub/my-run --use-ema
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="checkpoint → model.safetensors + config.json (timm / HF hub layout)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="the authors' .pth (give --model) or a datvit checkpoint")
    p.add_argument("dst", metavar="DST_DIR", help="directory to write model.safetensors and config.json into")
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--img-size", type=int, default=None, help="build the model for this input size (tables resized)")
    p.add_argument("--use-ema", action="store_true", help="convert the checkpoint's EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace model.safetensors / config.json in DST_DIR")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles other Python objects to run code while loading (only for "
                        "files you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("convert", lambda: convert(args))


def convert(args: argparse.Namespace) -> Path:
    from ..inference import hub_config, load_model, save_hub_directory
    from ..inference.hub import CONFIG_NAME, WEIGHTS_NAME

    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"DST_DIR {dst} exists and is not a directory")
    existing = [dst / n for n in (WEIGHTS_NAME, CONFIG_NAME) if (dst / n).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{existing[0]} already exists: pass --overwrite to replace it, or choose another DST_DIR")
    loaded = load_model(args.src, args.model, img_size=args.img_size, use_ema=args.use_ema,
                        trust_checkpoint=args.trust_checkpoint)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create DST_DIR {dst}: {e.strerror or e}") from None
    config = hub_config(loaded.arch, loaded.data_config, loaded.model, loaded.class_names)
    weights, config_path = save_hub_directory(dst, loaded.model.state_dict(), config)
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"wrote {weights} ({n / 1e6:.2f}M parameters) and {config_path} "
          f"(architecture {config['architecture']}, {config['num_classes']} classes)", file=sys.stderr)
    return dst
