"""``datvit eval``: top-1/top-5/loss of a checkpoint on a folder or the built-in dataset.

datvit checkpoints record their architecture (``arch``), class names, data configuration and dataset, so
``datvit eval --checkpoint run/last.pth`` needs nothing else. The authors' ``.pth`` files (or bare state_dicts)
need ``--model``; the class count and input channels are read from the weights. Evaluation is timm's: resize to
``img_size / crop_pct`` (bicubic), center crop, normalise — at any ``--img-size`` (position tables are resized).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Optional

from ..data.loader import create_dataset, create_loader, resolve_dataset_kind
from ..deploy import InferenceOptimization, optimize_for_inference
from ..inference import LoadedModel, eval_transform, load_model, resolve_data_config
from ..models.factory import count_parameters
from ..utils.files import atomic_write_text
from . import distributed as dist_utils
from .config import default_workers
from .engine import TrainingError, evaluate
from .precision import resolve_amp


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What ``datvit eval`` evaluates and how; the field names are timm ``validate.py``'s flags. Unset
    preprocessing values come from the checkpoint (its ``data_config``), unset data from the run that wrote it."""

    checkpoint: str
    model: Optional[str] = None
    data_dir: Optional[str] = None
    dataset: Optional[str] = None
    split: Optional[str] = None
    img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    batch_size: int = 256
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    use_ema: bool = False
    trust_checkpoint: bool = False
    workers: int = dataclasses.field(default_factory=default_workers)
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    device: Optional[str] = None
    output: Optional[str] = None
    progress: bool = True
    optimization: Optional[InferenceOptimization] = None


def load_eval_model(config: EvalConfig) -> LoadedModel:
    """The checkpoint's model (rebuilt from its record, or ``--model``) with its weights and preprocessing, through
    the inference layer; ``--crop-pct``/``--interpolation``/``--mean``/``--std`` override the preprocessing."""
    loaded = load_model(
        config.checkpoint,
        config.model,
        img_size=config.img_size,
        num_classes=config.num_classes,
        in_chans=config.in_chans,
        use_ema=config.use_ema,
        trust_checkpoint=config.trust_checkpoint,
    )
    loaded.data_config = resolve_data_config(
        loaded.data_config,
        loaded.model,
        crop_pct=config.crop_pct,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
    )
    return loaded


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate; prints one line and returns the results (also written as JSON to ``config.output``)."""
    info = dist_utils.init_distributed(config.device)
    try:
        return _run_eval(config, info)
    finally:
        dist_utils.cleanup()


def _run_eval(config: EvalConfig, info: dist_utils.DistInfo) -> dict[str, Any]:
    loaded = load_eval_model(config)
    train_args = (loaded.checkpoint.training.get("args") or {}) if loaded.checkpoint else {}
    dataset, data_dir = config.dataset, config.data_dir
    if dataset is None and data_dir is None and train_args:
        dataset, data_dir = train_args.get("dataset"), train_args.get("data_dir")
    split = config.split or train_args.get("val_split") or "val"
    model, name = loaded.model, loaded.name
    model.to(info.device)

    data_config = loaded.data_config
    img_size = int(data_config["input_size"][-1])

    kind = resolve_dataset_kind(dataset, data_dir)
    transform = eval_transform(data_config)
    class_names = loaded.class_names
    data = create_dataset(
        kind,
        data_dir,
        split,
        transform=transform,
        image_mode="L" if model.in_chans == 1 else "RGB",
        class_names=class_names,
    )
    if len(data.classes) > model.num_classes:
        raise TrainingError(
            f"the dataset has {len(data.classes)} classes, the model's classifier "
            f"{model.num_classes}: evaluate a checkpoint trained on this dataset"
        )
    loader = create_loader(
        data, config.batch_size, training=False, workers=config.workers, rank=info.rank, world_size=info.world_size
    )
    amp = resolve_amp(info.device, config.amp, config.amp_dtype)
    if amp.message and info.is_main:
        print(f"warning: {amp.message}", file=sys.stderr)
    if config.channels_last:
        import torch

        model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    if config.optimization is not None:
        model = optimize_for_inference(model, config.optimization)
    result = evaluate(
        model,
        loader,
        info.device,
        amp,
        info,
        progress=config.progress,
        desc=f"eval {os.path.basename(config.checkpoint)}",
        channels_last=config.channels_last,
    )
    seconds = time.perf_counter() - start
    corrupt = sorted({c.path for part in dist_utils.gather_objects(result["corrupt"], info) for c in part})
    results = {
        "model": name,
        "checkpoint": config.checkpoint,
        "ema": config.use_ema,
        "dataset": kind,
        "split": split,
        "images": result["count"],
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
        "img_size": img_size,
        "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"],
        "param_count": count_parameters(model),
        "seconds": seconds,
        "corrupt_files": len(corrupt),
    }
    if info.is_main:
        for path in corrupt[:20]:
            print(f"warning: skipped unreadable image {path}", file=sys.stderr)
        if result["count"]:
            print(
                f"{name} on {kind}/{split} ({result['count']} images, {img_size}px, crop {data_config['crop_pct']}, "
                f"{data_config['interpolation']}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                f"loss {result['loss']:.4f}  ({seconds:.1f} s)"
            )
        else:
            print(f"no readable images in {kind}/{split}", file=sys.stderr)
        if corrupt:
            print(f"warning: {len(corrupt)} unreadable image file(s) skipped", file=sys.stderr)
        if config.output:
            atomic_write_text(json.dumps(results, indent=2), config.output)
    return results
