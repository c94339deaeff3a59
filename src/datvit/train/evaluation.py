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

from timm.data import resolve_data_config
from torch import nn

from datvit.models import load_checkpoint, read_checkpoint
from datvit.models.checkpoint import extract_state_dict

from ..data.loader import create_dataset, create_loader, eval_transform, resolve_dataset_kind
from . import distributed as dist_utils
from .config import IMAGENET_MEAN, IMAGENET_STD
from .engine import TrainingError, evaluate
from .modeling import count_parameters, create_model, head_size, model_from_arch, resolve_model_kwargs
from .precision import resolve_amp


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """timm ``validate.py``'s flag names."""
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


def _infer_from_weights(state: Mapping[str, Any]) -> dict[str, Optional[int]]:
    stem = state.get("patch_proj.0.weight")
    return {"num_classes": head_size(state), "in_chans": int(stem.shape[1]) if stem is not None else None}


def build_eval_model(args: argparse.Namespace, checkpoint: Any) -> tuple[nn.Module, str]:
    """The model described by the checkpoint (or ``--model``), with the checkpoint's weights loaded."""
    state = extract_state_dict(checkpoint, args.use_ema, source=args.checkpoint)
    inferred = _infer_from_weights(state)
    num_classes = args.num_classes or inferred["num_classes"]
    in_chans = args.in_chans or inferred["in_chans"]
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    if arch and not args.model:
        model = model_from_arch(arch, num_classes=num_classes, in_chans=in_chans, img_size=args.img_size)
        name = arch["name"]
    elif args.model:
        kwargs = resolve_model_kwargs(args.model, None, None, num_classes=num_classes, in_chans=in_chans,
                                      img_size=args.img_size)
        model, name = create_model(args.model, kwargs), args.model
    else:
        raise TrainingError(f"{args.checkpoint} does not record its architecture (an authors' or bare checkpoint): "
                            "pass --model, e.g. --model dat_tiny")
    if args.use_ema and isinstance(checkpoint, dict) and checkpoint.get("arch") and not checkpoint.get("model_ema"):
        raise TrainingError(f"{args.checkpoint} holds no EMA weights (trained without --model-ema)")
    load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, reset_head_on_mismatch=False)
    return model, name


def resolve_eval_data_config(args: argparse.Namespace, checkpoint: Any, model: nn.Module) -> dict[str, Any]:
    """Mean, std, crop and resolution for evaluating ``model``: the training run's (a datvit ``checkpoint`` records
    them) or the model's pretrained config (ImageNet defaults), overridden by ``--img-size``/``--crop-pct``/..."""
    base_cfg = dict((checkpoint.get("data_config") if isinstance(checkpoint, dict) else None) or {})
    if not base_cfg:
        base_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        base_cfg.setdefault("mean", IMAGENET_MEAN)
        base_cfg.setdefault("std", IMAGENET_STD)
        base_cfg.setdefault("crop_pct", 0.875)
        base_cfg.setdefault("interpolation", "bicubic")
        base_cfg["input_size"] = (model.in_chans, model.img_size, model.img_size)
    overrides = {"in_chans": model.in_chans, "img_size": args.img_size, "crop_pct": args.crop_pct,
                 "interpolation": args.interpolation, "mean": args.mean, "std": args.std}
    if args.img_size is None:
        overrides["input_size"] = (model.in_chans, *base_cfg["input_size"][1:])
    data_config = resolve_data_config(args=overrides, pretrained_cfg=base_cfg)
    for key in ("mean", "std"):
        values = tuple(data_config[key])
        if len(values) != model.in_chans:
            if model.in_chans != 1:
                raise TrainingError(f"the {key} has {len(values)} values for a {model.in_chans}-channel model: "
                                    f"give --{key} with {model.in_chans} values")
            data_config[key] = (sum(values) / len(values),)   # grey images: the channels' average
    img_size = int(data_config["input_size"][-1])
    if img_size < model.min_input_size:
        raise TrainingError(f"--img-size {img_size} is below this model's minimum input {model.min_input_size}")
    return data_config


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; prints one line and returns the results (also written to ``--results-file``)."""
    info = dist_utils.init_distributed(args.device)
    try:
        return _run_eval(args, info)
    finally:
        dist_utils.cleanup()


def _run_eval(args: argparse.Namespace, info: dist_utils.DistInfo) -> dict[str, Any]:
    checkpoint = read_checkpoint(args.checkpoint)
    ours = isinstance(checkpoint, dict) and "arch" in checkpoint
    train_args = checkpoint.get("args", {}) if ours else {}
    if args.dataset is None and args.data_dir is None and train_args:
        args.dataset, args.data_dir = train_args.get("dataset"), train_args.get("data_dir")
    split = args.split or train_args.get("val_split") or "val"
    model, name = build_eval_model(args, checkpoint)
    model.to(info.device)

    data_config = resolve_eval_data_config(args, checkpoint, model)
    img_size = int(data_config["input_size"][-1])

    kind = resolve_dataset_kind(args.dataset, args.data_dir)
    transform = eval_transform(img_size, data_config["mean"], data_config["std"], data_config["crop_pct"],
                               data_config["interpolation"])
    class_names = checkpoint.get("class_names") if ours else None
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
    result = evaluate(model, loader, info.device, amp, info, progress=not args.no_progress,
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
