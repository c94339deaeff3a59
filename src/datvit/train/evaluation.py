"""``datvit eval``: top-1/top-5/loss of a checkpoint on a folder or the built-in dataset.

datvit checkpoints record their architecture (``arch``), class names, data configuration and dataset, so
``datvit eval --checkpoint run/last.pth`` needs nothing else. The authors' ``.pth`` files (or bare state_dicts)
need ``--model``; the class count and input channels are read from the weights. Evaluation is timm's: resize to
``img_size / crop_pct`` (bicubic), center crop, normalise — at any ``--img-size`` (position tables are resized).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Mapping, Optional

from ..data.loader import create_dataset, create_loader, resolve_dataset_kind
from ..deploy import add_inference_optimization_arguments, optimize_from_args
from ..inference import LoadedModel, eval_transform, load_model, resolve_data_config
from ..models.factory import count_parameters
from . import distributed as dist_utils
from .engine import TrainingError, evaluate
from .precision import resolve_amp


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """timm ``validate.py``'s flag names."""
    add_inference_optimization_arguments(p, amp=False)   # eval's own --amp autocasts around the model
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="datvit checkpoint (last.pth, best.pth, ...) or the authors' .pth (then give --model)")
    p.add_argument("--model", default=None,
                   help="variant for checkpoints that do not record it (the authors' files), e.g. dat_tiny")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="ImageNet-style folder (its --split subfolder, or the class folders themselves) or the "
                        "Fashion-MNIST files; default: the checkpoint's training data, else the built-in "
                        "Fashion-MNIST")
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
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles Python objects besides tensors and configs to run code "
                        "while loading (only for files you trust; refused otherwise)")
    p.add_argument("--workers", "-j", type=int, default=min(4, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader workers")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision (GPU; CPU only with native bf16)")
    p.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu")
    p.add_argument("--results-file", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_eval_model(args: argparse.Namespace) -> LoadedModel:
    """The checkpoint's model (rebuilt from its record, or ``--model``) with its weights and preprocessing, through
    the inference layer; ``--crop-pct``/``--interpolation``/``--mean``/``--std`` override the preprocessing."""
    loaded = load_model(args.checkpoint, args.model, img_size=args.img_size, num_classes=args.num_classes,
                        in_chans=args.in_chans, use_ema=args.use_ema,
                        trust_checkpoint=getattr(args, "trust_checkpoint", False))
    loaded.data_config = resolve_data_config(
        loaded.data_config, loaded.model, crop_pct=getattr(args, "crop_pct", None),
        interpolation=getattr(args, "interpolation", None), mean=getattr(args, "mean", None),
        std=getattr(args, "std", None))
    return loaded


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; prints one line and returns the results (also written to ``--results-file``)."""
    info = dist_utils.init_distributed(args.device)
    try:
        return _run_eval(args, info)
    finally:
        dist_utils.cleanup()


def _run_eval(args: argparse.Namespace, info: dist_utils.DistInfo) -> dict[str, Any]:
    loaded = load_eval_model(args)
    train_args = (loaded.checkpoint.training.get("args") or {}) if loaded.checkpoint else {}
    if args.dataset is None and args.data_dir is None and train_args:
        args.dataset, args.data_dir = train_args.get("dataset"), train_args.get("data_dir")
    split = args.split or train_args.get("val_split") or "val"
    model, name = loaded.model, loaded.name
    model.to(info.device)

    data_config = loaded.data_config
    img_size = int(data_config["input_size"][-1])

    kind = resolve_dataset_kind(args.dataset, args.data_dir)
    transform = eval_transform(data_config)
    class_names = loaded.class_names
    dataset = create_dataset(kind, args.data_dir, split, transform=transform,
                             image_mode="L" if model.in_chans == 1 else "RGB", class_names=class_names)
    if len(dataset.classes) > model.num_classes:
        raise TrainingError(f"the dataset has {len(dataset.classes)} classes, the model's classifier "
                            f"{model.num_classes}: evaluate a checkpoint trained on this dataset")
    loader = create_loader(dataset, args.batch_size, training=False, workers=args.workers, rank=info.rank,
                           world_size=info.world_size)
    amp = resolve_amp(info.device, args.amp, args.amp_dtype)
    if amp.message and info.is_main:
        print(f"warning: {amp.message}", file=sys.stderr)
    if args.channels_last:
        import torch
        model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    result = evaluate(optimize_from_args(model, args), loader, info.device, amp, info, progress=not args.no_progress,
                      desc=f"eval {os.path.basename(args.checkpoint)}", channels_last=args.channels_last)
    seconds = time.perf_counter() - start
    corrupt = sorted({c.path for part in dist_utils.gather_objects(result["corrupt"], info) for c in part})
    results = {
        "model": name, "checkpoint": args.checkpoint, "ema": args.use_ema, "dataset": kind, "split": split,
        "images": result["count"], "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
        "img_size": img_size, "crop_pct": data_config["crop_pct"], "interpolation": data_config["interpolation"],
        "param_count": count_parameters(model), "seconds": seconds, "corrupt_files": len(corrupt),
    }
    if info.is_main:
        for path in corrupt[:20]:
            print(f"warning: skipped unreadable image {path}", file=sys.stderr)
        if result["count"]:
            print(f"{name} on {kind}/{split} ({result['count']} images, {img_size}px, crop {data_config['crop_pct']}, "
                  f"{data_config['interpolation']}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                  f"loss {result['loss']:.4f}  ({seconds:.1f} s)")
        else:
            print(f"no readable images in {kind}/{split}", file=sys.stderr)
        if corrupt:
            print(f"warning: {len(corrupt)} unreadable image file(s) skipped", file=sys.stderr)
        if args.results_file:
            with open(args.results_file, "w") as f:
                json.dump(results, f, indent=2)
    return results
