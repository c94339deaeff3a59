"""``datvit predict``: the top-k classes of images, with probabilities, from any checkpoint.

Images are preprocessed as the checkpoint's model was evaluated (its resolution, mean/std, resize + center crop)
and run in batches. Class names come from the checkpoint (datvit checkpoints and ``datvit convert`` directories
record them); a 1000-class head without names gets ImageNet-1k's (timm's offline ``ImageNetInfo``); otherwise
"class <i>". An unreadable image is reported in one line and the others are still predicted (exit status 1 when
any failed)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ._errors import run_with_user_errors
from ._run_args import add_trust_checkpoint_argument

EPILOG = """examples:
  datvit predict shoe.png --checkpoint demo_output/fashion_mnist/last.pth
  datvit predict photos/ 'more/**/*.jpg' --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --topk 3
  datvit predict photos/ --checkpoint converted_dir/ --json --output predictions.json
"""

# What a directory given as input is searched for (lower-case suffixes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="top-k classes of images from a checkpoint",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE|DIR|GLOB",
        help="image files, directories (their images, sorted) or glob patterns ('**' recurses)",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="datvit checkpoint, the authors' .pth (then give --model), or a datvit convert directory",
    )
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    from ._deploy_args import add_inference_optimization_arguments

    add_inference_optimization_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (to stdout, or --output)")
    p.add_argument("--output", default=None, metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    add_trust_checkpoint_argument(p)
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    outcome: dict[str, int] = {}
    code = run_with_user_errors("predict", lambda: outcome.setdefault("code", predict(args)))
    return code or outcome.get("code", 0)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths in command-line order (directories sorted, globs sorted, duplicates once) and the inputs that
    name nothing, with why."""
    files: list[str] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                missing.append((item, "directory holds no image files"))
            files.extend(found)
        elif os.path.exists(item):
            files.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                missing.append((item, "pattern matches no files"))
            files.extend(found)
        else:
            missing.append((item, "no such file or directory"))
    seen: set[str] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, missing


def class_labels(class_names: Optional[list[str]], num_classes: int) -> list[str]:
    """A label per output: the checkpoint's names, ImageNet-1k's for a 1000-class head, else "class <i>"."""
    if class_names and len(class_names) >= num_classes:
        return list(class_names[:num_classes])
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    names = list(class_names or [])
    return names + [f"class {i}" for i in range(len(names), num_classes)]


def _image_error(error: BaseException) -> str:
    """PIL's message without the file object's repr it embeds."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if text.startswith("cannot identify image file"):
        return "not an image file PIL can decode (corrupt, truncated or another format)"
    return text


def predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..inference import eval_transform, load_model
    from ..utils.files import atomic_write_text
    from ..utils.images import IMAGE_ERRORS, read_image
    from ._deploy_args import optimize_from_args

    if args.topk < 1:
        raise ValueError(f"--topk {args.topk}: must be at least 1")
    if args.batch_size < 1:
        raise ValueError(f"-b/--batch-size {args.batch_size}: must be at least 1")
    files, missing = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError("no images to predict: " + "; ".join(f"{p}: {why}" for p, why in missing))
    loaded = load_model(
        args.checkpoint,
        args.model,
        img_size=args.img_size,
        use_ema=args.use_ema,
        trust_checkpoint=args.trust_checkpoint,
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(device)
    forward = optimize_from_args(model, args)  # --compile: torch.compile with inductor freezing
    transform = eval_transform(loaded.data_config)
    labels = class_labels(loaded.class_names, int(model.num_classes))
    topk = min(args.topk, len(labels))

    errors: list[dict[str, str]] = [{"file": p, "error": why} for p, why in missing]
    for item in errors:
        print(f"datvit predict: error: {item['file']}: {item['error']}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(files),
        desc="predict",
        unit="img",
        file=sys.stderr,
        disable=args.no_progress or len(files) < 2 * args.batch_size,
    )
    for start in range(0, len(files), args.batch_size):
        batch, names = [], []
        for path in files[start : start + args.batch_size]:
            try:
                batch.append(transform(read_image(path, loaded.image_mode)))
                names.append(path)
            except IMAGE_ERRORS as e:
                why = _image_error(e)
                errors.append({"file": path, "error": f"cannot read image: {why}"})
                tqdm.write(f"datvit predict: error: cannot read image {path}: {why}", file=sys.stderr)
        if batch:
            with torch.inference_mode():
                probs = forward(torch.stack(batch).to(device)).float().softmax(-1).cpu()
            values, indices = probs.topk(topk, dim=-1)
            for path, vals, idxs in zip(names, values.tolist(), indices.tolist()):
                results.append(
                    {
                        "file": path,
                        "predictions": [
                            {"index": i, "label": labels[i], "probability": round(v, 6)} for v, i in zip(vals, idxs)
                        ],
                    }
                )
        bar.update(len(files[start : start + args.batch_size]))
    bar.close()

    if args.json:
        text = (
            json.dumps(
                {"checkpoint": loaded.source, "model": loaded.name, "results": results, "errors": errors}, indent=2
            )
            + "\n"
        )
    else:
        lines = []
        for r in results:
            shown = ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in r["predictions"])
            lines.append(f"{r['file']}: {shown}")
        text = "\n".join(lines) + ("\n" if lines else "")
    if args.output:
        atomic_write_text(text, args.output)
        print(f"wrote {args.output} ({len(results)} image(s), {len(errors)} error(s))", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 1 if errors else 0
