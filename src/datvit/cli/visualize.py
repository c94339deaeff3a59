"""``datvit visualize``: draw where the deformable attention of a trained DAT / DAT++ samples its keys.

Loads a checkpoint (datvit's, or the authors' with --model), preprocesses one image the way ``datvit eval`` does
(the run's resolution, mean/std, resize + center crop) and writes a PNG with, for every D block, the reference
grid and the sampled key positions of each offset group over the image."""
from __future__ import annotations

import argparse

from ._errors import run_with_user_errors

EPILOG = """examples:
  datvit visualize --checkpoint demo_output/fashion_mnist/last.pth --image shoe.png
  datvit visualize --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --image cat.jpg --out cat_points.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("visualize", help="draw the deformable sampling points of a model on an image (PNG)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="datvit checkpoint or the authors' .pth (then give --model)")
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--image", required=True, metavar="FILE", help="image file (anything PIL reads)")
    p.add_argument("--out", default=None, metavar="PNG", help="output PNG (default: <image name>_dat_points.png)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="center-crop ratio (default: the checkpoint's)")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles other Python objects to run code while loading (only for "
                        "files you trust)")
    p.add_argument("--max-blocks", type=int, default=8, help="at most this many D blocks, the deepest (default 8)")
    p.set_defaults(func=run, interpolation=None, mean=None, std=None, num_classes=None, in_chans=None)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("visualize", lambda: visualize(args))


def visualize(args: argparse.Namespace):
    from pathlib import Path

    import numpy as np
    import torch
    from ..utils.images import IMAGE_ERRORS, read_image
    from ..inference import eval_transform
    from ..tools import collect_deformable_points, plot_deformable_points
    from ..train.evaluation import load_eval_model

    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image file not found: {image_path}")
    loaded = load_eval_model(args)
    model, name = loaded.model, loaded.name
    try:
        image = read_image(image_path, "L" if model.in_chans == 1 else "RGB")
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read image {image_path}: {e}") from None
    data_config = loaded.data_config
    x = eval_transform(data_config)(image)
    logits, points = collect_deformable_points(model, x)
    # the picture the model saw, un-normalised for display
    mean = torch.tensor(data_config["mean"]).view(-1, 1, 1)
    std = torch.tensor(data_config["std"]).view(-1, 1, 1)
    shown = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    shown = shown[..., 0] if shown.shape[-1] == 1 else shown
    out = Path(args.out) if args.out else image_path.with_name(f"{image_path.stem}_dat_points.png")
    probs = logits.softmax(-1)[0]
    top = int(probs.argmax())
    classes = loaded.class_names
    label = classes[top] if classes and top < len(classes) else f"class {top}"
    plot_deformable_points(np.asarray(shown), points, out, max_blocks=args.max_blocks,
                           title=f"{name} on {image_path.name}: {label} ({100 * float(probs[top]):.1f}%)")
    print(f"wrote {out} ({len(points)} deformable block(s))")
    return out
