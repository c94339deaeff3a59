"""``datvit visualize``: draw where the deformable attention of a trained DAT / DAT++ samples its keys.

Loads a checkpoint (datvit's, or the authors' with --model), preprocesses one image the way ``datvit eval`` does
(the run's resolution, mean/std, resize + center crop) and writes a PNG with one panel per D block:

  points    the reference grid and the sampled key positions of each offset group (the default)
  queries   the paper's second figure: each query pixel (--query Y,X, or --top-queries N: the pixels that
            receive the most attention) as a star, its --topk most attended sampled keys as circles whose area
            is the attention weight (averaged over heads)
  received  every sampled key as a circle whose area is the attention it receives from all queries

Query coordinates are pixels of the image the model sees (after resize and center crop, as drawn: 0..223 at 224).
--blocks picks D blocks by stage (3) or stage.block (3.2), 1-based."""

from __future__ import annotations

import argparse

from ._errors import run_with_user_errors
from ._run_args import add_trust_checkpoint_argument

EPILOG = """examples:
  datvit visualize --checkpoint demo_output/fashion_mnist/last.pth --image shoe.png
  datvit visualize --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --image cat.jpg --out cat_points.png
  datvit visualize --model datpp_tiny --checkpoint datpp_tiny.pth --image cat.jpg --query 80,120 --query 150,60
  datvit visualize --checkpoint last.pth --image shoe.png --top-queries 3 --topk 12 --blocks 3,4.2
  datvit visualize --checkpoint last.pth --image shoe.png --mode received
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "visualize",
        help="draw where deformable attention samples and what it attends to (PNG)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="datvit checkpoint or the authors' .pth (then give --model)"
    )
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--image", required=True, metavar="FILE", help="image file (anything PIL reads)")
    p.add_argument(
        "--output",
        "--out",
        dest="output",
        default=None,
        metavar="PNG",
        help="output PNG (default: <image name>_dat_points.png)",
    )
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="center-crop ratio (default: the checkpoint's)")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    add_trust_checkpoint_argument(p)
    p.add_argument("--max-blocks", type=int, default=8, help="at most this many D blocks, the deepest (default 8)")
    p.set_defaults(func=run, interpolation=None, mean=None, std=None, num_classes=None, in_chans=None)
    p.add_argument(
        "--mode",
        default=None,
        choices=("points", "queries", "received"),
        help="what to draw (default: queries when --query/--top-queries is given, else points)",
    )
    p.add_argument(
        "--query",
        action="append",
        type=_query,
        default=None,
        metavar="Y,X",
        help="a query pixel (row, column of the model's input image); repeatable",
    )
    p.add_argument(
        "--top-queries",
        type=int,
        default=None,
        metavar="N",
        help="instead of --query: the N pixels of each block's map that receive the most attention",
    )
    p.add_argument("--topk", type=int, default=8, help="sampled keys drawn per query (default 8)")
    p.add_argument(
        "--blocks",
        default=None,
        metavar="SPEC",
        help="D blocks to draw: stages and stage.block, 1-based, e.g. 3,4.2 (default: all; points mode: "
        "the deepest --max-blocks)",
    )


def _query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X (two numbers, e.g. 80,120), got {text!r}") from None
    return y, x


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("visualize", lambda: (_check_attention_arguments(args), visualize(args)))


def _check_attention_arguments(args: argparse.Namespace) -> None:
    """What is wrong with the attention options, before any model is loaded."""
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if args.query and args.top_queries:
        raise ValueError("give either --query or --top-queries, not both")
    if args.mode == "queries" and not (args.query or args.top_queries):
        raise ValueError("--mode queries needs --query Y,X or --top-queries N")
    if args.top_queries is not None and args.top_queries < 1:
        raise ValueError(f"--top-queries must be at least 1, got {args.top_queries}")
    if args.mode == "points" and (args.query or args.top_queries):
        raise ValueError("--mode points draws no queries: drop --query/--top-queries or use --mode queries")


def visualize(args: argparse.Namespace):
    from pathlib import Path

    import numpy as np
    import torch

    from ..inference import eval_transform
    from ..tools import collect_deformable_points, plot_deformable_points
    from ..train.evaluation import load_eval_model
    from ..utils.images import IMAGE_ERRORS, read_image

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
    out = Path(args.output) if args.output else image_path.with_name(f"{image_path.stem}_dat_points.png")
    probs = logits.softmax(-1)[0]
    top = int(probs.argmax())
    classes = loaded.class_names
    label = classes[top] if classes and top < len(classes) else f"class {top}"
    title = f"{name} on {image_path.name}: {label} ({100 * float(probs[top]):.1f}%)"
    mode = args.mode or ("queries" if args.query or args.top_queries else "points")
    if mode == "points":
        if args.blocks:
            from ..tools import parse_blocks

            wanted = set(parse_blocks(args.blocks, model))
            points = [p for p in points if (p.stage, p.block) in wanted]
        plot_deformable_points(
            np.asarray(shown), points, out, max_blocks=len(points) if args.blocks else args.max_blocks, title=title
        )
        print(f"wrote {out} ({len(points)} deformable block(s))")
        return out
    return _draw_attention(
        args,
        model,
        x,
        np.asarray(shown),
        mode,
        title,
        out if args.output else image_path.with_name(f"{image_path.stem}_dat_{mode}.png"),
    )


def _draw_attention(args: argparse.Namespace, model, x, shown, mode: str, title: str, out):
    """The paper's second figure (queries) or the received-attention view, one panel per chosen D block."""
    from ..tools import collect_deformable_attention, parse_blocks, plot_deformable_attention

    blocks = parse_blocks(args.blocks, model) if args.blocks else None
    maps = collect_deformable_attention(model, x, args.query, top_queries=args.top_queries, blocks=blocks)
    plot_deformable_attention(shown, maps, out, mode=mode, topk=args.topk, title=title)
    print(f"wrote {out} ({len(maps)} deformable block(s), {mode})")
    return out
