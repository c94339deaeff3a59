"""What ``datvit det|seg eval`` and ``predict`` run: a dense training checkpoint back into its model, COCO /
mIoU evaluation with a per-class table, predictions drawn over images. Each takes a frozen config
(:class:`DenseEvalConfig`, :class:`DensePredictConfig`); the flags that fill them are in ``datvit.cli._dense``."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..train.config import default_workers


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseEvalConfig:
    """``datvit det|seg eval``: a checkpoint on a dataset split (by default the run's own validation split).
    Segmentation's sliding-window settings and ``reduce_zero_label`` default to the run's."""

    checkpoint: str
    data_dir: Optional[str] = None
    split: Optional[str] = None
    batch_size: int = 2
    eval_mode: str = "whole"
    crop_size: Optional[int] = None
    eval_stride: Optional[int] = None
    reduce_zero_label: Optional[bool] = None
    use_ema: bool = False
    workers: int = dataclasses.field(default_factory=default_workers)
    amp: bool = False
    amp_dtype: str = "bfloat16"
    device: Optional[str] = None
    output: Optional[str] = None
    progress: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class DensePredictConfig:
    """``datvit det|seg predict``: images (files, directories, globs) drawn into ``output`` as PNGs, and the
    predictions as JSON in ``json`` ('-': standard output)."""

    images: Sequence[str]
    checkpoint: str
    output: str = "output/predict"
    json: Optional[str] = None
    score_thresh: float = 0.5
    eval_mode: str = "whole"
    crop_size: Optional[int] = None
    eval_stride: Optional[int] = None
    use_ema: bool = False
    device: Optional[str] = None
    progress: bool = True
    runtime: str = "torch"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseExportConfig:
    """``datvit det|seg export``: a checkpoint written as ``format`` to ``output``, then checked against eager
    (``datvit.dense.export``). ``img_size``: segmentation, the size traced and checked (the graph's only size with
    ``static_size``), default the training crop; detection, the example image the ONNX exporter traces (its size
    stays dynamic)."""

    checkpoint: str
    output: str
    format: str = "onnx"
    onnx_exporter: str = "legacy"
    img_size: Optional[Sequence[int]] = None
    static_size: bool = False
    opset: Optional[int] = None
    sampling: Optional[str] = None
    use_ema: bool = False
    check: bool = True


# -- checkpoints back into models -------------------------------------------------------------------------------


def load_dense_checkpoint(path: str, task: str, use_ema: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model a ``datvit det|seg train`` checkpoint describes, with its weights (or the EMA's), in eval mode,
    and the checkpoint's record (class names, data config, config)."""
    from ..models import read_checkpoint
    from . import DetectorConfig, SegmenterConfig, build_detector, build_segmenter
    from .tasks import config_from_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "dense_config" not in ckpt:
        raise ValueError(
            f"{path} is not a datvit {task} checkpoint (no dense_config): train one with "
            f"`datvit {'det' if task == 'detection' else 'seg'} train`"
        )
    if ckpt.get("task") != task:
        other = "datvit det" if ckpt.get("task") == "detection" else "datvit seg"
        raise ValueError(f"{path} holds a {ckpt.get('task')} model; use {other}")
    cls = DetectorConfig if task == "detection" else SegmenterConfig
    cfg = config_from_dict(cls, ckpt["dense_config"])
    model = build_detector(cfg) if task == "detection" else build_segmenter(cfg)
    key = "model_ema" if use_ema else "model"
    if use_ema and ckpt.get("model_ema") is None:
        raise ValueError(f"{path} has no EMA weights (trained without --model-ema)")
    model.load_state_dict(ckpt[key])
    model.eval()
    return model, ckpt


# -- eval --------------------------------------------------------------------------------------------------------


def _eval_dataset(config: DenseEvalConfig, ckpt: dict[str, Any], task: str) -> Any:
    run_args = ckpt.get("args") or {}
    data_dir = config.data_dir or run_args.get("data_dir")
    split = config.split or run_args.get("val_split") or "val"
    if not data_dir:
        raise ValueError("--data-dir is required (the checkpoint does not name its dataset)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist")
    if task == "detection":
        from . import CocoDetection

        return CocoDetection(data_dir, split), data_dir, split  # no transform: the detector resizes itself
    from . import SegmentationFolder, segmentation_transforms

    reduce = config.reduce_zero_label
    if reduce is None:
        reduce = bool((ckpt.get("data_config") or {}).get("reduce_zero_label", run_args.get("reduce_zero_label")))
    data = ckpt.get("data_config") or {}
    ds = SegmentationFolder(
        data_dir, split, reduce_zero_label=reduce, num_classes=len(ckpt.get("class_names") or []) or None
    )
    ds.transforms = segmentation_transforms(
        False,
        scale=data.get("img_scale", (2048, 512)),
        mean=data.get("mean", IMAGENET_DEFAULT_MEAN),
        std=data.get("std", IMAGENET_DEFAULT_STD),
    )
    return ds, data_dir, split


def run_eval(config: DenseEvalConfig, task: str) -> dict[str, Any]:
    """Evaluate a checkpoint; prints the headline metrics and the per-class table; returns the results."""
    from ..data.loader import create_loader
    from ..train.distributed import DistInfo, resolve_device
    from ..train.precision import resolve_amp
    from . import collate_detection, collate_segmentation
    from .tasks import evaluate_detection, evaluate_segmentation

    device = resolve_device(config.device)
    model, ckpt = load_dense_checkpoint(config.checkpoint, task, config.use_ema)
    model.to(device)
    dataset, data_dir, split = _eval_dataset(config, ckpt, task)
    class_names = list(ckpt.get("class_names") or [])
    amp = resolve_amp(device, config.amp, config.amp_dtype)
    if amp.message:
        print(f"warning: {amp.message}", file=sys.stderr)
    loader = create_loader(
        dataset,
        config.batch_size,
        training=False,
        workers=config.workers,
        collate_fn=collate_detection if task == "detection" else collate_segmentation,
    )
    info = DistInfo(device=device)
    start = time.perf_counter()
    if task == "detection":
        if list(getattr(dataset, "categories", class_names)) != class_names:
            raise ValueError(
                f"the categories of {data_dir}/{split} differ from the checkpoint's: "
                f"{list(dataset.categories)[:5]}… vs {class_names[:5]}…"
            )
        result = evaluate_detection(model, loader, class_names, device, amp, info, config.progress)
    else:
        crop = config.crop_size or (ckpt.get("data_config") or {}).get("crop_size") or 512
        result = evaluate_segmentation(
            model,
            loader,
            len(class_names),
            device,
            amp,
            info,
            config.progress,
            mode=config.eval_mode,
            crop=crop,
            stride=config.eval_stride,
        )
    seconds = time.perf_counter() - start
    result = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}
    print(format_eval(result, task, class_names, f"{data_dir}/{split}", len(dataset), seconds))
    skipped = getattr(dataset, "skipped", None)
    if skipped and sum(skipped.values()):
        print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())), file=sys.stderr)
    if config.output:
        from ..utils.files import atomic_write_text

        record = {
            "checkpoint": config.checkpoint,
            "data": f"{data_dir}/{split}",
            "images": len(dataset),
            "seconds": seconds,
            **result,
        }
        atomic_write_text(json.dumps(record, indent=2) + "\n", config.output)
    return result


def _pct(v: Optional[float], scale: float = 1.0) -> str:
    return "-" if v is None or v != v else f"{v * scale:.1f}"


def format_eval(
    result: dict[str, Any], task: str, class_names: list[str], where: str, images: int, seconds: float
) -> str:
    """The eval report: headline metrics then one row per class."""
    lines = [f"{where}: {images} images in {seconds:.1f} s"]
    if task == "detection":
        lines.append(f"box  mAP {_pct(result.get('bbox_mAP'), 100)}  mAP@50 {_pct(result.get('bbox_mAP50'), 100)}")
        if result.get("segm_mAP") is not None:
            lines.append(f"mask mAP {_pct(result.get('segm_mAP'), 100)}  mAP@50 {_pct(result.get('segm_mAP50'), 100)}")
        per_class = result.get("per_class") or {}
        if per_class:
            has_mask = any(isinstance(v, dict) and v.get("segm_AP") is not None for v in per_class.values())
            lines.append(f"{'class':<20} {'box AP':>7}" + (f" {'mask AP':>7}" if has_mask else ""))
            for name, v in per_class.items():
                v = v if isinstance(v, dict) else {"bbox_AP": v}
                lines.append(
                    f"{name:<20} {_pct(v.get('bbox_AP'), 100):>7}"
                    + (f" {_pct(v.get('segm_AP'), 100):>7}" if has_mask else "")
                )
    else:
        lines.append(f"mIoU {_pct(result.get('mIoU'), 100)}  pixel accuracy {_pct(result.get('aAcc'), 100)}")
        ious = result.get("per_class_iou") or []
        lines.append(f"{'class':<20} {'IoU':>6}")
        for i, iou in enumerate(ious):
            name = class_names[i] if i < len(class_names) else f"class {i}"
            lines.append(f"{name:<20} {_pct(iou, 100):>6}")
    return "\n".join(lines)


# -- predict ------------------------------------------------------------------------------------------------------


def expand_images(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files, directories (their images, sorted) and glob patterns → (image paths, items that matched nothing)."""
    from ..data.folder import IMG_EXTENSIONS

    found: list[str] = []
    missing: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found += sorted(str(p) for p in Path(item).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        elif os.path.exists(item):
            found.append(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                missing.append(item)
            found += matches
    if not found:
        raise FileNotFoundError(f"no images in {', '.join(items)}")
    return found, missing


@torch.no_grad()
def predict_image(
    model: torch.nn.Module,
    image: Any,
    task: str,
    ckpt: dict[str, Any],
    config: DensePredictConfig,
    device: torch.device,
) -> dict[str, Any]:
    """One PIL image → predictions (detection: boxes/labels/scores/masks above the threshold; segmentation:
    the per-pixel class map)."""
    from torchvision.transforms.v2 import functional as TF

    if task == "detection":
        tensor = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        pred = model([tensor.to(device)])[0]
        keep = pred["scores"] >= config.score_thresh
        return {k: v[keep].cpu() for k, v in pred.items()}
    from . import segment, segmentation_transforms

    data = ckpt.get("data_config") or {}
    rescale = segmentation_transforms(
        False,
        scale=data.get("img_scale", (2048, 512)),
        mean=data.get("mean", IMAGENET_DEFAULT_MEAN),
        std=data.get("std", IMAGENET_DEFAULT_STD),
    )
    x, _ = rescale(TF.to_image(image), None)
    crop = config.crop_size or data.get("crop_size") or 512
    mode, stride = config.eval_mode, config.eval_stride or max(1, crop * 2 // 3)
    fixed = getattr(model, "fixed_size", None)
    if fixed is not None:  # an exported graph of one size: windows of that size
        mode, crop, stride = "slide", tuple(fixed), tuple(max(1, c * 2 // 3) for c in fixed)
    logits = segment(
        model,
        x[None].to(device),
        len(ckpt.get("class_names") or []),
        mode=mode,
        crop=crop,
        stride=stride,
        out_size=(image.height, image.width),
    )
    return {"classes": logits.argmax(1)[0].cpu()}


def run_predict(config: DensePredictConfig, task: str) -> int:
    """Predict every image, draw each into ``--output/<name>.png``, optionally write JSON; an unreadable image
    is reported in one line and skipped (exit status 1 if any was)."""
    from tqdm import tqdm

    from ..train.distributed import resolve_device
    from ..utils.images import IMAGE_ERRORS, read_image
    from .drawing import draw_detections, draw_segmentation

    paths, missing = expand_images(config.images)
    command = f"datvit {'det' if task == 'detection' else 'seg'} predict"
    for item in missing:
        print(f"{command}: error: {item}: no such file, directory or matching pattern", file=sys.stderr)
    if config.runtime == "torch":
        device = resolve_device(config.device)
        model, ckpt = load_dense_checkpoint(config.checkpoint, task, config.use_ema)
        model.to(device)
    else:
        from .export import load_exported

        if config.use_ema:
            raise ValueError("--use-ema takes the EMA weights of a checkpoint; export them with --use-ema instead")
        device = torch.device("cpu")
        model, ckpt = load_exported(config.checkpoint, task, config.runtime)
    class_names = list(ckpt.get("class_names") or [])
    out_dir = Path(config.output)
    records, failed = [], len(missing)
    for path in tqdm(paths, desc="predict", disable=not config.progress or len(paths) < 2, dynamic_ncols=True):
        try:
            image = read_image(path, "RGB")
        except IMAGE_ERRORS as e:
            print(f"{command}: error: {path}: cannot read the image ({e})", file=sys.stderr)
            failed += 1
            continue
        pred = predict_image(model, image, task, ckpt, config, device)
        target = out_dir / (Path(path).stem + ".png")
        if task == "detection":
            draw_detections(image, pred, class_names, target)
            records.append(
                {
                    "image": path,
                    "output": str(target),
                    "boxes": pred["boxes"].tolist(),
                    "labels": [
                        class_names[i - 1] if 0 < i <= len(class_names) else int(i) for i in pred["labels"].tolist()
                    ],
                    "scores": [round(s, 4) for s in pred["scores"].tolist()],
                }
            )
        else:
            draw_segmentation(image, pred["classes"], class_names, target)
            counts = torch.bincount(pred["classes"].flatten(), minlength=len(class_names)).tolist()
            records.append(
                {
                    "image": path,
                    "output": str(target),
                    "pixels": {
                        class_names[i] if i < len(class_names) else str(i): c for i, c in enumerate(counts) if c
                    },
                }
            )
    for r in records:
        what = f"{len(r['boxes'])} detections" if task == "detection" else f"{len(r['pixels'])} classes"
        print(f"{r['image']}: {what} -> {r['output']}")
    if config.json:
        text = json.dumps(records, indent=2) + "\n"
        if config.json == "-":
            sys.stdout.write(text)
        else:
            from ..utils.files import atomic_write_text

            atomic_write_text(text, config.json)
    return 1 if failed else 0


# -- export -------------------------------------------------------------------------------------------------------


def _other_size(h: int, w: int, minimum: int) -> tuple[int, int]:
    """A second check size: not square, odd sides (never a multiple of 32), at least ``minimum``."""
    h2 = max(minimum, h * 3 // 4) | 1
    w2 = max(minimum, w + w // 3) | 1
    return (h2, w2 + 2) if h2 == w2 else (h2, w2)


def run_export(config: DenseExportConfig, task: str) -> dict[str, Any]:
    """Export a checkpoint (``datvit.dense.export``), print what was written, check it against eager on two
    sizes (one non-square, neither a multiple of 32); ExportError when the export or the check fails."""
    from ..tools.export import ExportError, timed
    from . import export as dx

    formats = dx.DETECTOR_FORMATS if task == "detection" else dx.SEGMENTER_FORMATS
    command = "det" if task == "detection" else "seg"
    if config.format not in formats:
        raise ValueError(f"--format {config.format}: datvit {command} export writes {', '.join(formats)}")
    if os.path.isdir(config.output):
        raise ValueError(f"--output {config.output} is a directory; give a file name")
    model, ckpt = load_dense_checkpoint(config.checkpoint, task, config.use_ema)
    cfg = model.dense_config if task == "detection" else model.cfg
    metadata = {
        "kind": cfg.kind,
        "backbone": cfg.backbone.model,
        "class_names": list(ckpt.get("class_names") or []),
        "data_config": ckpt.get("data_config") or {},
        "checkpoint": os.path.basename(config.checkpoint),
    }
    what = f"{cfg.kind} ({cfg.backbone.model} backbone)"
    result: dict[str, Any] = {"format": config.format, "output": config.output}
    if task == "segmentation":
        default = int((ckpt.get("data_config") or {}).get("crop_size") or 512)
        h, w = dx.resolve_segmenter_size(model, config.img_size, default)
        dynamic = not config.static_size and dx.dynamic_size_supported()
        opset = config.opset or dx.DEFAULT_OPSET
        size = "dynamic H×W" if dynamic else f"fixed {h}×{w} (smaller images are padded, larger ones windowed)"
        sampling = f", {config.sampling} sampling" if config.sampling else ""
        print(f"exporting {what} to ONNX (opset {opset}{sampling}), dynamic batch, {size} ...", flush=True)
        path, seconds = timed(
            dx.export_segmenter, model, config.output, (h, w), dynamic, opset, metadata, config.sampling
        )
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {seconds:.1f} s", flush=True)
        if not config.check:
            return result
        sizes = [(h, w), _other_size(h, w, model.min_input_size)] if dynamic else [(h, w)]
        checks = dx.check_segmenter_export(path, model, sizes)
        for c in checks:
            print(
                f"check: onnxruntime vs eager on {tuple(c.input_shape)}: max |Δ| = {c.max_abs_diff:.3g} (logits up "
                f"to {c.output_max_abs:.3g}), argmax equal on {100 * c.argmax_agreement:.3f}% of pixels"
            )
        result["checks"] = [dataclasses.asdict(c) for c in checks]
        bad = [c for c in checks if not c.ok]
        if bad:
            raise ExportError(
                f"the exported file differs from eager on {tuple(bad[0].input_shape)} (max |Δ| "
                f"{bad[0].max_abs_diff:.3g} > {dx.LOGITS_TOLERANCE:g} or argmax agreement "
                f"{100 * bad[0].argmax_agreement:.2f}% < {100 * dx.ARGMAX_AGREEMENT:g}%): {path} was written "
                "but should not be trusted"
            )
        return result
    short = int(model.transform.min_size[-1])  # the evaluation size the detector resizes to
    example = tuple(config.img_size) if config.img_size else (short, short * 4 // 3)
    if len(example) == 1:
        example = (example[0], example[0])
    if len(example) != 2 or min(example) < 1:
        raise ValueError(f"--img-size takes H or H W (positive), got {list(config.img_size or [])}")
    exporter = {
        "torchscript": "TorchScript (torch.jit.script), any image size",
        "onnx": f"ONNX ({'TorchScript-based' if config.onnx_exporter == 'legacy' else 'dynamo'} exporter), one "
        "image of any size per run",
        "torch-export": "torch.export",
    }[config.format]
    print(f"exporting {what} to {exporter} ...", flush=True)
    path, seconds = timed(
        dx.export_detector, model, config.format, config.output, example, config.onnx_exporter, config.opset, metadata
    )
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {seconds:.1f} s", flush=True)
    if not config.check:
        return result
    sizes = [example, _other_size(example[0], example[1], 1)]
    runner = {"onnx": "onnxruntime (CPU)", "torchscript": "the loaded ScriptModule"}.get(config.format, "the program")
    checks = dx.check_detector_export(path, model, sizes, runtime=config.format)
    for c in checks:
        print(
            f"check: {runner} vs eager on a {c.image_shape[1]}×{c.image_shape[2]} image: {c.exported_detections} "
            f"detections (eager {c.eager_detections}), boxes max |Δ| = {c.max_box_diff:.3g} px, scores max |Δ| = "
            f"{c.max_score_diff:.3g}"
        )
    if not any(c.eager_detections for c in checks):
        print(
            "note: no detections above the score threshold on the random check images: only their number was compared",
            file=sys.stderr,
        )
    result["checks"] = [dataclasses.asdict(c) for c in checks]
    bad = [c for c in checks if not c.ok]
    if bad:
        raise ExportError(
            f"the exported file differs from eager on a {bad[0].image_shape[1]}×{bad[0].image_shape[2]} image "
            f"({bad[0].exported_detections} vs {bad[0].eager_detections} detections, boxes max |Δ| "
            f"{bad[0].max_box_diff:.3g} px, scores max |Δ| {bad[0].max_score_diff:.3g}): {path} was written but "
            "should not be trusted"
        )
    return result
