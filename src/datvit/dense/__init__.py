"""Detection and semantic segmentation with DAT/DAT++ backbones: torchvision detectors, smp segmenters, COCO and
ADE20K-layout data, metrics, and an offline scenes dataset built from Fashion-MNIST. See ``docs/dense.md``."""
from .backbone import DenseBackbone
from .config import (DENSE_PRESETS, DETECTOR_KINDS, SEGMENTER_KINDS, BackboneConfig, DetectorConfig,
                     SegmenterConfig, dense_preset)
from .detection import build_detector
from .segmentation import Segmenter, build_segmenter, segmentation_loss

__all__ = ["DENSE_PRESETS", "DETECTOR_KINDS", "SEGMENTER_KINDS", "BackboneConfig", "DenseBackbone",
           "DetectorConfig", "SegmenterConfig", "Segmenter", "build_detector", "build_segmenter",
           "dense_preset", "segmentation_loss"]
