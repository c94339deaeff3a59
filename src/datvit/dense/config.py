"""Typed configurations of the dense models (frozen dataclasses) and presets named after the authors' configs.

Resolve, then build: a config holds every value the builders need; ``None`` fields mean "what the authors use for
this kind" and are filled in by ``resolved()`` (one pure step), so a builder never guesses. The presets reproduce
``configs/dat/*.py`` of LeapLabTHU/DAT-Detection and DAT-Segmentation (``docs/dense.md`` lists what differs between
torchvision/smp and mmdet/mmseg), plus small demo presets for 128×128 Fashion-MNIST scenes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..models.factory import PRESETS

DETECTOR_KINDS = ("mask_rcnn", "faster_rcnn", "retinanet")
# COCO training: short side 480–800 in steps of 32 (long side ≤ 1333); testing 800 (the last entry).
COCO_TRAIN_MIN_SIZES = tuple(range(480, 801, 32))
SEGMENTER_KINDS = ("upernet", "fpn")


@dataclass(frozen=True)
class BackboneConfig:
    """A DAT/DAT++ variant (or any timm model with 4 stages at strides 4–32, e.g. ``resnet18``) as a dense backbone.

    ``model_kwargs`` are constructor arguments that override the variant's (a custom configuration);
    ``out_indices`` pick stage outputs (0–3 = strides 4, 8, 16, 32); ``frozen_stages`` k ≥ 0 freezes the stem and
    stages < k (mmdet's meaning; −1 trains everything, as every authors' config); ``weights`` is a checkpoint loaded
    by ``load_backbone_weights`` at build time.
    """

    model: str = "datpp_tiny"
    model_kwargs: dict = field(default_factory=dict)
    out_indices: tuple = (0, 1, 2, 3)
    frozen_stages: int = -1
    grad_checkpointing: bool = False
    drop_path_rate: Optional[float] = None
    weights: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "out_indices", tuple(int(i) for i in self.out_indices))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if (
            not self.out_indices
            or sorted(set(self.out_indices)) != list(self.out_indices)
            or not all(0 <= i <= 3 for i in self.out_indices)
        ):
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {self.out_indices}")
        if self.frozen_stages < -1 or self.frozen_stages > 4:
            raise ValueError(f"frozen_stages must be -1 (none) or 0..4, got {self.frozen_stages}")


def _check_head(cfg: Any, kinds: tuple[str, ...], what: str, classes: str) -> None:
    """What a detector's and a segmenter's config check alike: a known kind, at least one class, and a backbone
    given as a dict (YAML, a checkpoint's record) turned into a BackboneConfig."""
    if cfg.kind not in kinds:
        raise ValueError(f"{what} kind must be one of {kinds}, got {cfg.kind!r}")
    if isinstance(cfg.backbone, dict):
        object.__setattr__(cfg, "backbone", BackboneConfig(**cfg.backbone))
    if cfg.num_classes < 1:
        raise ValueError(f"{classes} must be ≥ 1, got {cfg.num_classes}")


@dataclass(frozen=True)
class DetectorConfig:
    """A torchvision detector over a ``DenseBackbone`` and an FPN as the authors configure it.

    ``min_size`` may be a tuple: torchvision then resizes each training image's short side to a random entry
    (multi-scale training) and evaluates at the last one. ``num_classes`` counts foreground classes (labels 1..K;
    torchvision is given K + 1 with 0 = background).
    Anchors are ``anchor_scale`` × the level's stride (mmdet's ``scales=[8]`` for the RPN; RetinaNet uses
    ``octave_base_scale=4`` with 3 scales per octave), aspect ratios 0.5/1/2. The RPN keeps 2000 → 1000 proposals
    in training (the authors' value; torchvision's default is 2000 → 2000).
    """

    kind: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_classes: int = 80
    fpn_channels: int = 256
    min_size: int | tuple = COCO_TRAIN_MIN_SIZES
    max_size: int = 1333
    image_mean: Optional[tuple] = None  # None: the backbone's pretrained_cfg (ImageNet for DAT)
    image_std: Optional[tuple] = None
    anchor_scale: Optional[float] = None  # None: 8 (two-stage) or 4 (RetinaNet)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    representation_size: int = 1024  # the 2-fc box head
    retinanet_topk_candidates: int = 1000

    def __post_init__(self):
        _check_head(self, DETECTOR_KINDS, "detector", "num_classes (foreground classes)")
        if isinstance(self.min_size, (list, tuple)):
            object.__setattr__(self, "min_size", tuple(int(v) for v in self.min_size))

    def resolved(self) -> "DetectorConfig":
        anchor = self.anchor_scale if self.anchor_scale is not None else (4.0 if self.kind == "retinanet" else 8.0)
        return dataclasses.replace(self, anchor_scale=float(anchor))


@dataclass(frozen=True)
class SegmenterConfig:
    """An smp UperNet or Semantic FPN over a ``tu-<model>`` encoder, with the authors' auxiliary FCN head.

    ``decoder_channels``: UPerHead channels (authors 512) or the Semantic FPN head's (authors 128);
    ``fpn_channels``: Semantic FPN pyramid channels (256). ``aux_head``: an FCN head (one 3×3 conv of
    ``aux_channels``, dropout, 1×1 classifier) on stage ``aux_stage`` whose loss is weighted ``aux_weight`` —
    None means "where the authors use one" (UperNet yes, Semantic FPN no).
    """

    kind: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_classes: int = 150
    decoder_channels: Optional[int] = None  # None: 512 (UperNet) / 128 (Semantic FPN)
    fpn_channels: int = 256
    aux_head: Optional[bool] = None  # None: True for UperNet, False for Semantic FPN
    aux_weight: float = 0.4
    aux_channels: int = 256
    aux_stage: int = 2
    dropout: float = 0.1
    ignore_index: int = 255

    def __post_init__(self):
        _check_head(self, SEGMENTER_KINDS, "segmenter", "num_classes")
        if self.backbone.out_indices != (0, 1, 2, 3):
            raise ValueError(
                f"segmenters use all four stages (out_indices (0, 1, 2, 3)), got {self.backbone.out_indices}"
            )

    def resolved(self) -> "SegmenterConfig":
        channels = self.decoder_channels or (512 if self.kind == "upernet" else 128)
        aux = self.aux_head if self.aux_head is not None else self.kind == "upernet"
        return dataclasses.replace(self, decoder_channels=channels, aux_head=aux)


# -- presets ------------------------------------------------------------------------------------------------------

# The dat_nano training preset (2.3M parameters) as the backbone of the 128×128 scenes demo, with a 4×4 patch stem:
# the necks take stage outputs at strides 4, 8, 16 and 32 (dat_nano's 2×2 stem suits 32×32 classification). The
# backbone config sets the drop path.
DAT_NANO_DENSE_KWARGS: dict[str, Any] = {
    **{k: v for k, v in PRESETS["dat_nano"].items() if k != "drop_path_rate"},
    "img_size": 128,
    "patch_size": 4,
}
FASHION_SCENE_CLASSES = 10


def _bb(model: str, dpr: float, ckpt: bool, out=(0, 1, 2, 3)) -> BackboneConfig:
    return BackboneConfig(model=model, out_indices=out, drop_path_rate=dpr, grad_checkpointing=ckpt)


def _demo_detector(model: str, kwargs: dict) -> DetectorConfig:
    """128×128 scenes: FPN 128, 64 sampled RoIs/anchors per image, 300 → 100 proposals, anchors 4 × stride
    (16–256 px; the items are 20–70 px)."""
    return DetectorConfig(
        kind="mask_rcnn",
        backbone=BackboneConfig(model=model, model_kwargs=kwargs, drop_path_rate=0.0),
        num_classes=FASHION_SCENE_CLASSES,
        fpn_channels=128,
        min_size=128,
        max_size=128,
        anchor_scale=4.0,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        box_detections_per_img=50,
        representation_size=256,
    )


def _demo_segmenter(model: str, kwargs: dict) -> SegmenterConfig:
    return SegmenterConfig(
        kind="upernet",
        backbone=BackboneConfig(model=model, model_kwargs=kwargs, drop_path_rate=0.0),
        num_classes=FASHION_SCENE_CLASSES + 1,
        decoder_channels=128,
        aux_channels=64,
    )


DENSE_PRESETS: dict[str, DetectorConfig | SegmenterConfig] = {
    # LeapLabTHU/DAT-Detection configs/dat/*.py (COCO, 80 classes); each drop path rate is the one its file name gives
    "mask_rcnn_datpp_tiny_1x": DetectorConfig("mask_rcnn", _bb("datpp_tiny", 0.0, True)),
    "mask_rcnn_datpp_tiny_3x": DetectorConfig("mask_rcnn", _bb("datpp_tiny", 0.3, True)),
    "mask_rcnn_datpp_small_1x": DetectorConfig("mask_rcnn", _bb("datpp_small", 0.1, True)),
    "mask_rcnn_datpp_small_3x": DetectorConfig("mask_rcnn", _bb("datpp_small", 0.5, True)),
    "retinanet_datpp_tiny_1x": DetectorConfig("retinanet", _bb("datpp_tiny", 0.0, True, (1, 2, 3))),
    "retinanet_datpp_tiny_3x": DetectorConfig("retinanet", _bb("datpp_tiny", 0.2, True, (1, 2, 3))),
    "retinanet_datpp_small_1x": DetectorConfig("retinanet", _bb("datpp_small", 0.1, True, (1, 2, 3))),
    "retinanet_datpp_small_3x": DetectorConfig("retinanet", _bb("datpp_small", 0.5, True, (1, 2, 3))),
    # Not an authors' config (they release no Faster R-CNN): Mask R-CNN 1× without the mask branch.
    "faster_rcnn_datpp_tiny_1x": DetectorConfig("faster_rcnn", _bb("datpp_tiny", 0.0, True)),
    # LeapLabTHU/DAT-Segmentation (ADE20K, 150 classes, reduce_zero_label)
    "upernet_datpp_tiny_160k": SegmenterConfig("upernet", _bb("datpp_tiny", 0.3, True)),
    "upernet_datpp_small_160k": SegmenterConfig("upernet", _bb("datpp_small", 0.5, True)),
    "upernet_datpp_base_160k": SegmenterConfig("upernet", _bb("datpp_base", 0.7, True)),
    "fpn_datpp_tiny_80k": SegmenterConfig("fpn", _bb("datpp_tiny", 0.4, False)),
    "fpn_datpp_small_80k": SegmenterConfig("fpn", _bb("datpp_small", 0.4, False)),
    "fpn_datpp_base_80k": SegmenterConfig("fpn", _bb("datpp_base", 0.7, False)),
    # Demo: 128×128 Fashion-MNIST scenes (make_fashion_scenes), a DAT and two timm CNNs of similar size.
    "mask_rcnn_dat_nano_scenes": _demo_detector("dat_tiny", DAT_NANO_DENSE_KWARGS),
    "mask_rcnn_resnet18_scenes": _demo_detector("resnet18", {}),
    "mask_rcnn_convnext_atto_scenes": _demo_detector("convnext_atto", {}),
    "upernet_dat_nano_scenes": _demo_segmenter("dat_tiny", DAT_NANO_DENSE_KWARGS),
    "upernet_resnet18_scenes": _demo_segmenter("resnet18", {}),
    "upernet_convnext_atto_scenes": _demo_segmenter("convnext_atto", {}),
}


def dense_preset(name: str, **overrides: Any) -> DetectorConfig | SegmenterConfig:
    """A copy of a preset with top-level fields replaced (``backbone`` may be a dict of BackboneConfig fields that
    update the preset's backbone)."""
    if name not in DENSE_PRESETS:
        raise KeyError(f"unknown dense preset {name!r}; known: {', '.join(DENSE_PRESETS)}")
    cfg = copy.deepcopy(DENSE_PRESETS[name])
    backbone = overrides.pop("backbone", None)
    if isinstance(backbone, dict):
        overrides["backbone"] = dataclasses.replace(cfg.backbone, **backbone)
    elif backbone is not None:
        overrides["backbone"] = backbone
    return dataclasses.replace(cfg, **overrides)
