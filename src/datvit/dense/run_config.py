"""The typed run configurations of ``datvit det train`` and ``datvit seg train`` and their recipes.

The engine's settings (:class:`datvit.train.config.EngineConfig`) plus what a dense task adds: the dataset
layout, the model (a ``DENSE_PRESETS`` name refined by flags) and the augmentation. The recipes are the authors'
Mask R-CNN 1× and UperNet 160k settings; a YAML file (the shipped ones are named after the authors' configs, e.g.
``mask_rcnn_datpp_tiny_1x.yaml``) and flags are laid over them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ..train.config import EngineConfig

# Mask R-CNN / RetinaNet 1× (DAT-Detection `configs/dat/*_1x*.py`): AdamW lr 4e-4 at ≈64 images per iteration
# (scaled linearly to the run's global batch), wd 0.05, step decay ×0.1 after epochs 8 and 11 of 12, linear
# warm-up over 500 iterations from lr × 1e-3, 2 images per GPU, no grad clipping, short side 800 / long ≤ 1333.
DETECTION_RECIPE: dict[str, Any] = dict(
    preset="mask_rcnn_datpp_tiny_1x",
    batch_size=2,
    epochs=12,
    opt="adamw",
    lr_base=4e-4,
    lr_base_size=64,
    weight_decay=0.05,
    sched="multistep",
    decay_milestones=[8, 11],
    decay_rate=0.1,
    warmup_epochs=0.0,
    warmup_iters=500,
    warmup_ratio=1e-3,
    warmup_lr=1e-6,
    min_lr=0.0,
    model_ema=False,
    model_ema_decay=0.9998,
    output="output/det",
)
# UperNet 160k (DAT-Segmentation `configs/dat/upernet_dat_*`): AdamW lr 6e-5 at 16 images per iteration, wd 0.01,
# poly (power 1) to 0 after a 1,500-iteration linear warm-up from lr × 1e-6, 160k iterations, crop 512.
SEGMENTATION_RECIPE: dict[str, Any] = dict(
    preset="upernet_datpp_tiny_160k",
    batch_size=2,
    iters=160_000,
    opt="adamw",
    lr_base=6e-5,
    lr_base_size=16,
    weight_decay=0.01,
    sched="poly",
    decay_rate=1.0,
    warmup_epochs=0.0,
    warmup_iters=1500,
    warmup_ratio=1e-6,
    warmup_lr=1e-6,
    min_lr=0.0,
    model_ema=False,
    model_ema_decay=0.9998,
    crop_size=512,
    img_scale=[2048, 512],
    output="output/seg",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseTrainConfig(EngineConfig):
    """What detection and segmentation runs share besides the engine's settings."""

    data_dir: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: Optional[int] = None
    aug_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    preset: Optional[str] = None
    model: Optional[str] = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    head_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    drop_path: Optional[float] = None
    out_indices: Optional[list[int]] = None
    frozen_stages: Optional[int] = None
    backbone_weights: Optional[str] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionTrainConfig(DenseTrainConfig):
    """``datvit det train``: a torchvision detector with a DAT backbone on a COCO-style dataset."""

    detector: Optional[str] = None
    img_size: Optional[int] = None
    max_size: Optional[int] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentationTrainConfig(DenseTrainConfig):
    """``datvit seg train``: an smp segmenter with a DAT backbone on an ADE20K-style folder."""

    segmenter: Optional[str] = None
    crop_size: Optional[int] = None
    img_scale: Optional[list[int]] = None
    reduce_zero_label: bool = False
    eval_mode: str = "whole"
    eval_stride: Optional[int] = None
