"""Detection and segmentation as tasks of datvit's one training engine (``datvit.train.engine.Trainer``).

Each task brings its data (COCO / ADE20K-layout folders and the torchvision.transforms.v2 recipes of
``datvit.dense``), its model (a torchvision detector or an smp segmenter over a DAT backbone, from a typed config),
its loss and its metrics (pycocotools box/mask AP; mIoU); the engine brings the loop, optimizer and schedule,
checkpoints and exact resume, logging and DDP. This module imports ``datvit.train`` (the engine's Task protocol);
``datvit.dense`` itself does not, so the library works without the training stack.

A dense checkpoint records ``task`` ("detection"/"segmentation") and ``dense_config`` (the resolved
DetectorConfig/SegmenterConfig as plain data, without the backbone-weights path), so ``datvit det eval`` and
``predict`` rebuild the model from the file alone.
"""

from __future__ import annotations

import dataclasses
import difflib
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..models.factory import count_parameters, regenerated_stage_spec
from ..train import distributed as dist_utils
from ..train.config import config_defaults
from ..train.errors import TrainingError
from ..train.precision import AmpPlan, autocast
from ..train.task import MetricSpec, StepOutput, Task
from .config import DetectorConfig, SegmenterConfig
from .data import collate_detection, collate_segmentation
from .run_config import DETECTION_RECIPE, SEGMENTATION_RECIPE, DetectionTrainConfig, SegmentationTrainConfig

# The authors' dense configs exempt these parameter names from weight decay (`paramwise_cfg.custom_keys`); their
# detection configs also exempt every normalisation layer (`norm_decay_mult 0`).
NO_DECAY_KEYS = ("norm", "rpe_table", "relative_position_bias_table", "absolute_pos_embed")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


# -- configs from flags -------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain data for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_fields(cls: type, values: dict[str, Any], what: str) -> None:
    known = _fields(cls)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown {what} field '{key}'{hint}; fields: {', '.join(sorted(known))}")


def _as_field_type(cls: type, name: str, value: Any) -> Any:
    """Lists from YAML/flags become tuples where the config's default is a tuple (frozen, hashable configs)."""
    default = _fields(cls)[name].default
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of ``config_to_dict`` for DetectorConfig / SegmenterConfig (the backbone is a BackboneConfig)."""
    from . import BackboneConfig

    data = dict(data)
    backbone = data.pop("backbone", None) or {}
    _check_fields(cls, data, cls.__name__)
    _check_fields(BackboneConfig, backbone, "BackboneConfig")
    bb = BackboneConfig(**{k: _as_field_type(BackboneConfig, k, v) for k, v in backbone.items()})
    return cls(backbone=bb, **{k: _as_field_type(cls, k, v) for k, v in data.items()})


def resolve_dense_config(args: Any, cls: type, kind_default: str) -> Any:
    """The model config of a run: the preset (``--preset``, a DENSE_PRESETS name) or the config class's
    defaults ← ``--head-kwargs`` ← the dedicated flags (``--model``, ``--model-kwargs``, ``--drop-path``,
    ``--out-indices``, ``--frozen-stages``, ``--grad-checkpointing``, ``--num-classes``, ``--detector`` /
    ``--segmenter``)."""
    from . import DENSE_PRESETS, BackboneConfig

    if args.preset:
        if args.preset not in DENSE_PRESETS:
            close = difflib.get_close_matches(args.preset, DENSE_PRESETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown --preset '{args.preset}'{hint}; presets: {', '.join(sorted(DENSE_PRESETS))}")
        base = config_to_dict(DENSE_PRESETS[args.preset])
        if not isinstance(DENSE_PRESETS[args.preset], cls):
            raise ValueError(
                f"--preset {args.preset} is a {type(DENSE_PRESETS[args.preset]).__name__}, not a {cls.__name__}"
            )
    else:
        base = {"kind": kind_default, "num_classes": args.num_classes or 1, "backbone": {}}
    backbone = dict(base.pop("backbone", {}) or {})
    head = {**base, **(args.head_kwargs or {})}
    kind = getattr(args, "detector", None) or getattr(args, "segmenter", None)
    if kind:
        head["kind"] = kind
    head["num_classes"] = args.num_classes
    if args.model:
        if args.model != backbone.get("model"):
            backbone["model_kwargs"] = {}  # a preset's custom kwargs belong to its backbone
        backbone["model"] = args.model
    if args.model_kwargs:
        backbone["model_kwargs"] = dat_kwargs_with_stage_spec(
            backbone.get("model", "datpp_tiny"), backbone.get("model_kwargs", {}), args.model_kwargs
        )
    for flag, key in (
        ("drop_path", "drop_path_rate"),
        ("out_indices", "out_indices"),
        ("frozen_stages", "frozen_stages"),
    ):
        if getattr(args, flag, None) is not None:
            backbone[key] = getattr(args, flag)
    if args.grad_checkpointing:
        backbone["grad_checkpointing"] = True
    backbone["weights"] = None  # loaded by the task (and never again when a checkpoint rebuilds the model)
    _check_fields(BackboneConfig, backbone, "BackboneConfig")
    return config_from_dict(cls, {**head, "backbone": backbone})


def dat_kwargs_with_stage_spec(model: str, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` ← ``overrides``; when the overrides change a DAT's depths (or generation) without giving a
    stage_spec, the block pattern is regenerated for the new depths by the rule ``datvit train`` follows
    (``regenerated_stage_spec``) instead of keeping one that no longer fits."""
    kwargs = {**base, **overrides}
    stage_spec = regenerated_stage_spec(model, kwargs, overrides)
    if stage_spec is not None:
        kwargs["stage_spec"] = stage_spec
    return kwargs


def dense_param_groups(model: nn.Module, weight_decay: float, exempt_norm_layers: bool) -> list[dict[str, Any]]:
    """Two AdamW groups as the authors' dense configs: no decay for parameters whose name contains one of
    ``NO_DECAY_KEYS`` (and, for detection, every parameter of a normalisation layer); decay for the rest —
    biases included, as mmcv's default constructor does."""
    exempt: set[int] = set()
    if exempt_norm_layers:
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                exempt.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in exempt or any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_dense_backbone(model: nn.Module, path: str, log: Any) -> None:
    from . import load_backbone_weights

    report = load_backbone_weights(model, path)
    log(f"loaded backbone weights from {path}" + (f" ({report})" if report else ""))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "model_kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _percent(value: Any) -> Optional[float]:
    """mIoU and pixel accuracy in %, as mmseg and the papers report them (None when undefined)."""
    value = _finite(value)
    return None if value is None else 100.0 * value


class _DenseTask(Task):
    """What detection and segmentation share: config resolution, backbone weights, param groups, loaders."""

    model_config_cls: type
    kind_default: str
    recipe_values: dict[str, Any]

    def recipe(self, settings: dict[str, Any]) -> dict[str, Any]:
        return dict(self.recipe_values)

    def draft(self, values: dict[str, Any]) -> SimpleNamespace:
        """The values being resolved, with the config's defaults for the rest (unset ones included), as attributes."""
        return SimpleNamespace(**{**config_defaults(self.run_config_cls), **values})

    def build_model(self) -> nn.Module:
        config = self.config
        self.dense_config = resolve_dense_config(config, self.model_config_cls, self.kind_default)
        model = self._build(self.dense_config)
        self.n_params = count_parameters(model)
        if config.backbone_weights:
            load_dense_backbone(model, config.backbone_weights, self.log)
        return model

    def optimizer_params(self, model: nn.Module) -> Any:
        return dense_param_groups(model, self.config.weight_decay, exempt_norm_layers=self.exempt_norm_layers)

    def _report_skipped(self, dataset: Any, split: str) -> None:
        summary = dataset.skip_summary() if dataset is not None else ""
        if summary:
            self.warn(f"{split}: {summary}")

    def checkpoint_record(self) -> dict[str, Any]:
        return {
            "dense_config": config_to_dict(self.dense_config),
            "class_names": self.class_names,
            "arch": None,
            "data_config": self.data_config,
        }

    def check_resume(self, loaded: Any, path: str) -> None:
        from ..models import CheckpointError

        saved = loaded.training.get("dense_config")
        if saved is None:
            raise CheckpointError(f"--resume {path}: not a datvit {self.name} checkpoint (no dense_config)")
        ours = config_to_dict(self.dense_config)
        flat_saved, flat_ours = _flatten(saved), _flatten(ours)
        differs = [k for k in sorted(set(flat_saved) | set(flat_ours)) if flat_saved.get(k) != flat_ours.get(k)]
        if differs:
            shown = "; ".join(f"{k}: {flat_saved.get(k)!r} vs {flat_ours.get(k)!r}" for k in differs[:4])
            raise CheckpointError(
                f"--resume {path}: the checkpoint was trained with another model ({shown}; "
                "checkpoint vs this run); resume with the run's flags, or start from its backbone "
                "with --backbone-weights"
            )

    def describe(self, model: nn.Module) -> str:
        cfg = self.dense_config
        backbone = cfg.backbone.model + (" (custom configuration)" if cfg.backbone.model_kwargs else "")
        return (
            f"training {cfg.kind} with a {backbone} backbone ({self.n_params / 1e6:.2f}M parameters) "
            f"on {self.config.data_dir} ({len(self.train_set)} training images, {len(self.class_names)} classes)"
        )


# -- detection --------------------------------------------------------------------------------------------------


class DetectionTask(_DenseTask):
    """Faster/Mask R-CNN or RetinaNet (torchvision) with a DAT backbone on a COCO-format dataset; box and mask
    mAP by pycocotools. Losses are torchvision's (summed); images go in as 0..1 floats, the detector's own
    transform resizes (``min_size``/``max_size``), normalises and pads them."""

    name = "detection"
    kind_default = "mask_rcnn"
    model_config_cls = DetectorConfig
    run_config_cls = DetectionTrainConfig
    recipe_values = DETECTION_RECIPE
    find_unused_parameters = True  # a batch without positive proposals leaves the mask head without gradient
    exempt_norm_layers = True
    collate_fn = staticmethod(collate_detection)
    metrics = MetricSpec(
        best="eval_bbox_mAP",
        eval_columns=(
            ("eval_bbox_mAP", "bbox_mAP", ".3f"),
            ("eval_bbox_mAP50", "bbox_mAP50", ".3f"),
            ("eval_segm_mAP", "segm_mAP", ".3f"),
            ("eval_segm_mAP50", "segm_mAP50", ".3f"),
        ),
        plot=(
            "map",
            "mAP (COCO)",
            "mAP",
            (
                ("eval_bbox_mAP", "box mAP"),
                ("eval_bbox_mAP50", "box mAP@50"),
                ("eval_segm_mAP", "mask mAP"),
                ("eval_segm_mAP50", "mask mAP@50"),
            ),
        ),
    )

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        from . import CocoDetection

        draft = self.draft(values)
        if not draft.data_dir:
            raise TrainingError(
                "--data-dir is required: a COCO-style directory with <split>/ images and "
                "annotations/instances_<split>.json"
            )
        # training skips images without usable annotations (mmdet's filter_empty_gt); evaluation keeps them, where
        # detections are false positives
        self.train_set = CocoDetection(
            draft.data_dir, draft.train_split, skip_empty=True, num_classes=draft.num_classes
        )
        self.class_names = list(self.train_set.categories)
        try:
            self.eval_set = CocoDetection(draft.data_dir, draft.val_split, num_classes=draft.num_classes)
        except FileNotFoundError as e:
            self.warn(f"no evaluation split ({e}); best.pth will follow the training loss")
            self.eval_set = None
        if self.eval_set is not None and list(self.eval_set.categories) != self.class_names:
            raise TrainingError(f"the categories of {draft.val_split} differ from those of {draft.train_split}")
        self._report_skipped(self.train_set, draft.train_split)
        self._report_skipped(self.eval_set, draft.val_split)
        if draft.num_classes is None:
            draft.num_classes = len(self.class_names)
        return vars(draft)

    def _build(self, cfg: Any) -> nn.Module:
        from . import build_detector

        if self.config.img_size:
            cfg = dataclasses.replace(
                cfg,
                min_size=self.config.img_size,
                max_size=self.config.max_size or max(cfg.max_size, self.config.img_size),
            )
        elif self.config.max_size:
            cfg = dataclasses.replace(cfg, max_size=self.config.max_size)
        self.dense_config = cfg
        self.data_config = {"min_size": cfg.min_size, "max_size": cfg.max_size}
        return build_detector(cfg)

    def attach_transforms(self, model: nn.Module) -> None:
        from . import detection_transforms

        self.train_set.transforms = detection_transforms(True, **self.config.aug_kwargs)
        if self.eval_set is not None:  # evaluation: no transform (the detector resizes images itself)
            self.eval_set.transforms = None

    def training_loss(self, model: nn.Module, batch: Any, epoch: int) -> StepOutput:
        images, targets, weight = batch.images, batch.targets, 1.0
        if images is None:  # every image of the batch was unreadable: under DDP every rank must still step
            size = self.dense_config.max_size
            images = [torch.zeros(3, size, size)]
            targets = [
                {
                    "boxes": torch.zeros(0, 4),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "masks": torch.zeros(0, size, size, dtype=torch.uint8),
                }
            ]
            weight = 0.0
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [
            {
                k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in t.items()
                if k != "image_id"
            }
            for t in targets
        ]
        losses = model(images, targets)
        loss = sum(losses.values()) * weight
        return StepOutput(loss, int(len(images) * weight), {})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, amp: AmpPlan, progress: bool, desc: str) -> dict[str, Any]:
        result = evaluate_detection(model, loader, self.class_names, self.device, amp, self.info, progress, desc)
        return {key: _finite(result.get(key)) for key in ("bbox_mAP", "bbox_mAP50", "segm_mAP", "segm_mAP50")} | {
            "problems": result.get("problems", [])
        }

    def run_summary(self, last_row: dict[str, Any]) -> dict[str, Any]:
        return {"final_bbox_mAP": last_row.get("eval_bbox_mAP"), "final_segm_mAP": last_row.get("eval_segm_mAP")}


def _finite(value: Any) -> Optional[float]:
    """None for a metric that is not defined (NaN: e.g. mask AP of a detector without masks)."""
    return None if value is None or value != value else float(value)


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    device: torch.device,
    amp: Optional[AmpPlan] = None,
    info: Optional[dist_utils.DistInfo] = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """COCO box (and mask) AP of ``model`` over the loader's shard; every rank's matches are merged, so the
    numbers equal a single-process evaluation. Returns CocoMetric's dict (``per_class`` included)."""
    from . import CocoMetric

    info = info or dist_utils.DistInfo(device=device)
    amp = amp or AmpPlan(False, torch.float32, False)
    was_training = model.training
    model.eval()
    metric = CocoMetric(class_names)
    problems: list[tuple[str, str]] = []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and info.is_main)):
        problems += [(s.path, s.error) for s in batch.corrupt]
        if batch.images is None:
            continue
        with autocast(device, amp):
            predictions = model([im.to(device) for im in batch.images])
        predictions = [
            {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in p.items()} for p in predictions
        ]
        metric.update(predictions, list(batch.targets))
    if info.distributed:
        states = dist_utils.gather_objects(metric.state(), info)
        metric = CocoMetric(class_names)
        metric.merge(states)
    result = metric.compute() if info.is_main else None
    result = dict(dist_utils.broadcast_object(result, info))
    result["problems"] = problems
    model.train(was_training)
    return result


# -- segmentation ---------------------------------------------------------------------------------------------


class SegmentationTask(_DenseTask):
    """UperNet or Semantic FPN (segmentation_models_pytorch) with a DAT backbone on an ADE20K-layout folder;
    per-pixel cross-entropy with ignore index 255 (+ the auxiliary head's, weighted as the authors: 0.4);
    mIoU, per-class IoU and pixel accuracy, evaluated on whole images padded to the network's multiple."""

    name = "segmentation"
    kind_default = "upernet"
    model_config_cls = SegmenterConfig
    run_config_cls = SegmentationTrainConfig
    recipe_values = SEGMENTATION_RECIPE
    exempt_norm_layers = False  # mmseg's configs exempt parameters by name only, not whole normalisation layers
    collate_fn = staticmethod(collate_segmentation)
    metrics = MetricSpec(
        best="eval_mIoU",
        eval_columns=(("eval_loss", "eval_loss", ".4f"), ("eval_mIoU", "mIoU", ".2f"), ("eval_aAcc", "aAcc", ".2f")),
        step_metrics=("acc",),
        plot=("miou", "segmentation", "%", (("eval_mIoU", "mIoU"), ("eval_aAcc", "pixel accuracy"))),
    )

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        from . import SegmentationFolder

        draft = self.draft(values)
        if not draft.data_dir:
            raise TrainingError(
                "--data-dir is required: an ADE20K-style directory with images/<split>/*.jpg and "
                "annotations/<split>/*.png"
            )
        if draft.crop_size % 32:
            raise TrainingError(
                f"--crop-size {draft.crop_size}: training crops must be multiples of 32 (the "
                "segmenters' output stride); evaluation pads any size"
            )
        self.train_set = SegmentationFolder(
            draft.data_dir, draft.train_split, reduce_zero_label=draft.reduce_zero_label, num_classes=draft.num_classes
        )
        names = self.train_set.class_names
        if draft.num_classes is None:
            if not names:
                raise TrainingError(
                    f"{draft.data_dir} has no classes.txt (one class name per line): give --num-classes"
                )
            draft.num_classes = len(names) - (1 if draft.reduce_zero_label else 0)
        if names and draft.reduce_zero_label and len(names) == draft.num_classes + 1:
            names = names[1:]  # classes.txt lists label 0 too, which --reduce-zero-label ignores
        self.class_names = (
            list(names)
            if names and len(names) == draft.num_classes
            else [f"class {i}" for i in range(draft.num_classes)]
        )
        try:
            self.eval_set = SegmentationFolder(
                draft.data_dir,
                draft.val_split,
                reduce_zero_label=draft.reduce_zero_label,
                num_classes=draft.num_classes,
            )
        except FileNotFoundError as e:
            self.warn(f"no evaluation split ({e}); best.pth will follow the training loss")
            self.eval_set = None
        self._report_skipped(self.train_set, draft.train_split)
        self._report_skipped(self.eval_set, draft.val_split)
        return vars(draft)

    def _build(self, cfg: Any) -> nn.Module:
        from . import build_segmenter

        model = build_segmenter(cfg)
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]  # the backbone's, else ImageNet's
        self.data_config = {
            "mean": list(mean),
            "std": list(std),
            "crop_size": self.config.crop_size,
            "img_scale": list(self.config.img_scale),
            "reduce_zero_label": bool(self.config.reduce_zero_label),
        }
        return model

    def attach_transforms(self, model: nn.Module) -> None:
        from . import segmentation_transforms

        config, data = self.config, self.data_config
        self.train_set.transforms = segmentation_transforms(
            True, crop=config.crop_size, scale=config.img_scale, mean=data["mean"], std=data["std"], **config.aug_kwargs
        )
        if self.eval_set is not None:
            self.eval_set.transforms = segmentation_transforms(
                False, crop=config.crop_size, scale=config.img_scale, mean=data["mean"], std=data["std"]
            )

    def training_loss(self, model: nn.Module, batch: Any, epoch: int) -> StepOutput:
        from . import segmentation_loss

        if batch.images is None:  # every image of the batch was unreadable: under DDP every rank must still step
            crop = self.config.crop_size
            out = model(torch.zeros(1, 3, crop, crop, device=self.device))
            zero = sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))) * 0.0
            return StepOutput(zero, 0, {"acc": 0.0})
        images = batch.images.to(self.device, non_blocking=True)
        masks = batch.targets.to(self.device, non_blocking=True).long()
        out = model(images)
        logits = out[0] if isinstance(out, tuple) else out
        loss = segmentation_loss(out, masks, aux_weight=self.dense_config.aux_weight)
        valid = masks != 255
        n = images.shape[0]
        correct = (logits.detach().argmax(1) == masks)[valid].sum().float()
        acc = 100.0 * correct / valid.sum().clamp(min=1)
        return StepOutput(loss, n, {"acc": acc * n})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, amp: AmpPlan, progress: bool, desc: str) -> dict[str, Any]:
        result = evaluate_segmentation(
            model,
            loader,
            len(self.class_names),
            self.device,
            amp,
            self.info,
            progress,
            desc,
            mode=self.config.eval_mode,
            crop=self.config.crop_size,
            stride=self.config.eval_stride,
        )
        return {
            "loss": result["loss"],
            "mIoU": _percent(result["mIoU"]),
            "aAcc": _percent(result["aAcc"]),
            "problems": result["problems"],
        }

    def run_summary(self, last_row: dict[str, Any]) -> dict[str, Any]:
        return {"final_mIoU": last_row.get("eval_mIoU"), "final_aAcc": last_row.get("eval_aAcc")}


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    amp: Optional[AmpPlan] = None,
    info: Optional[dist_utils.DistInfo] = None,
    progress: bool = True,
    desc: str = "eval",
    mode: str = "whole",
    crop: int = 512,
    stride: Optional[int] = None,
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy (%) and the mean per-pixel loss over the loader's shard, with
    every rank's confusion matrix summed. Each image is segmented at its own size (``datvit.dense.segment``:
    padded to the network's multiple and cropped back, or by sliding windows)."""
    from . import SegMetric, segment

    info = info or dist_utils.DistInfo(device=device)
    amp = amp or AmpPlan(False, torch.float32, False)
    was_training = model.training
    model.eval()
    metric = SegMetric(num_classes)
    loss_sum = pixels = 0.0
    problems: list[tuple[str, str]] = []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and info.is_main)):
        problems += [(s.path, s.error) for s in batch.corrupt]
        if batch.images is None:
            continue
        for image, mask in zip(batch.images, batch.targets):
            image = image.to(device)
            mask = mask.to(device).long()
            with autocast(device, amp):  # scored at the label's size, as mmseg (the image may be rescaled)
                logits = segment(
                    model,
                    image[None],
                    num_classes,
                    mode=mode,
                    crop=crop,
                    stride=stride or max(1, crop * 2 // 3),
                    out_size=mask.shape[-2:],
                )
            logits = logits.float()
            valid = int((mask != 255).sum())
            if valid:
                loss_sum += F.cross_entropy(logits, mask[None], ignore_index=255, reduction="sum").item()
                pixels += valid
            metric.update(logits.argmax(1)[0].cpu(), mask.cpu())
    if info.distributed:  # the confusion matrices of all ranks summed: the metrics of the whole split
        metric.merge(dist_utils.gather_objects(metric.state(), info))
        loss_sum, pixels = dist_utils.all_reduce_sum([loss_sum, pixels], info)
    result = dict(metric.compute())
    result["loss"] = loss_sum / pixels if pixels else None
    result["problems"] = problems
    model.train(was_training)
    return result
