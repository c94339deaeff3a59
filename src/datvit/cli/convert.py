"""``datvit convert``: a checkpoint (the authors' ``.pth`` or datvit's) → ``OUTPUT/model.safetensors``, a timm
``config.json`` and a model card ``README.md``: the layout of timm models on the Hugging Face hub.

The directory loads with identical logits through ``timm.create_model("local-dir:OUTPUT", pretrained=True)``,
through transformers' ``AutoModelForImageClassification.from_pretrained(OUTPUT)`` (both after ``import
datvit``, which registers the architectures with timm) and through ``datvit.inference.load_model(OUTPUT)`` /
``datvit predict --checkpoint OUTPUT``. The weights are the model's state_dict after datvit's strict, checked load
(wrapper prefixes removed, position tables at the model's size); config.json records the architecture and its
arguments (custom configurations rebuild), the classes and their names, and the preprocessing.
``--push-to-hub USER/REPO`` then uploads the directory (a Hugging Face token is needed: ``hf auth login``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ._errors import run_with_user_errors
from ._run_args import add_trust_checkpoint_argument

EPILOG = """examples:
  datvit convert --checkpoint dat_tiny_in1k_224.pth --output hub/dat_tiny --model dat_tiny
  datvit convert --checkpoint output/train/my-run/best.pth --output hub/my-run --use-ema
  datvit convert --checkpoint best.pth --output hub/my-run --push-to-hub my-user/dat-tiny-flowers
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="checkpoint → model.safetensors + config.json + README.md (timm / HF hub layout), optionally pushed",
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
        help="directory to write model.safetensors, config.json and README.md into (also accepted as the second "
        "argument; optional with --push-to-hub)",
    )
    p.add_argument("positional", nargs="*", metavar="SRC DST_DIR", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--img-size", type=int, default=None, help="build the model for this input size (tables resized)")
    p.add_argument("--use-ema", action="store_true", help="convert the checkpoint's EMA weights")
    p.add_argument(
        "--overwrite", action="store_true", help="replace model.safetensors / config.json / README.md in --output"
    )
    hub = p.add_argument_group("Hugging Face hub")
    hub.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="upload the directory to this hub repository (USER/NAME, created when missing); needs a token",
    )
    hub.add_argument("--private", action="store_true", help="create the hub repository private")
    hub.add_argument(
        "--token", default=None, help="Hugging Face token (default: the one `hf auth login` stored, or HF_TOKEN)"
    )
    hub.add_argument("--revision", default=None, help="hub branch to push to (default: main)")
    add_trust_checkpoint_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("convert", lambda: convert(args))


def _paths(args: argparse.Namespace) -> tuple[str, str | None]:
    """--checkpoint and --output, or the two positional arguments of the older ``datvit convert SRC DST_DIR``
    (no output directory with --push-to-hub: a temporary one is uploaded)."""
    rest = list(args.positional)
    src = args.checkpoint or (rest.pop(0) if rest else None)
    dst = args.output or (rest.pop(0) if rest else None)
    if rest or not src or not (dst or args.push_to_hub):
        raise ValueError("give --checkpoint FILE and --output DIR (or SRC DST_DIR)")
    return src, dst


def convert(args: argparse.Namespace) -> Path | str:
    """Write the directory and push it when asked; returns the directory, or the repository URL once pushed
    without --output."""
    src, dst = _paths(args)
    if args.push_to_hub:  # no token: stop before any work
        from ..inference.hub import hub_token

        args.token = hub_token(args.token)
    if dst is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="datvit-convert-") as tmp:
            write_directory(args, src, Path(tmp))
            return push(args, Path(tmp))
    out = write_directory(args, src, Path(dst))
    if args.push_to_hub:
        push(args, out)
    return out


def write_directory(args: argparse.Namespace, src: str, dst: Path) -> Path:
    from ..inference import hub_config, load_model, save_hub_directory
    from ..inference.hub import CONFIG_NAME, README_NAME, WEIGHTS_NAME, model_card
    from ..models import count_parameters

    if dst.exists() and not dst.is_dir():
        raise ValueError(f"--output {dst} exists and is not a directory")
    existing = [dst / n for n in (WEIGHTS_NAME, CONFIG_NAME, README_NAME) if (dst / n).exists()]
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
    readme = model_card(config, loaded.model, args.push_to_hub, macs=_macs(loaded.model, config))
    weights, config_path = save_hub_directory(dst, loaded.model.state_dict(), config, readme)
    n = count_parameters(loaded.model)
    print(
        f"wrote {weights} ({n / 1e6:.2f}M parameters), {config_path} and {dst / README_NAME} "
        f"(architecture {config['architecture']}, {config['num_classes']} classes)",
        file=sys.stderr,
    )
    return dst


def push(args: argparse.Namespace, directory: Path) -> str:
    from ..inference.hub import push_to_hub

    url = push_to_hub(directory, args.push_to_hub, token=args.token, private=args.private, revision=args.revision)
    print(f"pushed model.safetensors, config.json and README.md to {url}", file=sys.stderr)
    return url


def _macs(model, config) -> Optional[int]:
    """The model card's multiply-adds at the model's input size; None when the count fails (a count is a nicety
    of the card, the weights are written regardless)."""
    from ..tools.flops import count_flops

    try:
        return count_flops(model, tuple(config["pretrained_cfg"]["input_size"])).macs
    except Exception:
        return None
