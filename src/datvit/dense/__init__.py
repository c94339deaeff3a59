"""Detection and semantic segmentation with DAT/DAT++ backbones: torchvision detectors, smp segmenters, COCO and
ADE20K-layout data, metrics, and an offline scenes dataset built from Fashion-MNIST. See ``docs/dense.md``."""

from .backbone import DenseBackbone
from .config import (
    COCO_TRAIN_MIN_SIZES,
    DENSE_PRESETS,
    DETECTOR_KINDS,
    SEGMENTER_KINDS,
    BackboneConfig,
    DetectorConfig,
    SegmenterConfig,
    dense_preset,
)
from .data import CocoDetection, SegmentationFolder, collate_detection, collate_segmentation
from .detection import build_detector
from .metrics import CocoMetric, SegMetric
from .scenes import make_fashion_scenes
from .segmentation import Segmenter, build_segmenter, segmentation_loss
from .sliding import segment
from .transforms import detection_transforms, segmentation_transforms
from .weights import WeightsReport, load_backbone_weights

__all__ = [
    "CocoMetric",
    "SegMetric",
    "WeightsReport",
    "load_backbone_weights",
    "segment",
    "COCO_TRAIN_MIN_SIZES",
    "DENSE_PRESETS",
    "DETECTOR_KINDS",
    "SEGMENTER_KINDS",
    "BackboneConfig",
    "CocoDetection",
    "DenseBackbone",
    "DetectorConfig",
    "SegmentationFolder",
    "Segmenter",
    "SegmenterConfig",
    "build_detector",
    "build_segmenter",
    "collate_detection",
    "collate_segmentation",
    "dense_preset",
    "detection_transforms",
    "make_fashion_scenes",
    "segmentation_loss",
    "segmentation_transforms",
]
