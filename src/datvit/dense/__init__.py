"""Detection and semantic segmentation with DAT/DAT++ backbones: torchvision detectors, smp segmenters, COCO and
ADE20K-layout data, metrics, and an offline scenes dataset built from Fashion-MNIST. See ``docs/dense.md``.

The package imports its parts on first use: ``datvit --help`` and the parsers of ``datvit det|seg`` read
``datvit.dense.config`` without loading segmentation_models_pytorch or pycocotools, so they work where the
``dense`` extra is not installed; the first use of a part that needs the extra names it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name → the module of this package that defines it
_EXPORTS: dict[str, str] = {
    "BackboneConfig": "config",
    "COCO_TRAIN_MIN_SIZES": "config",
    "CocoDetection": "data",
    "CocoMetric": "metrics",
    "DENSE_PRESETS": "config",
    "DETECTOR_KINDS": "config",
    "DenseBackbone": "backbone",
    "DetectorConfig": "config",
    "ExportedDetector": "export",
    "ExportedSegmenter": "export",
    "SEGMENTER_KINDS": "config",
    "SegMetric": "metrics",
    "SegmentationFolder": "data",
    "Segmenter": "segmentation",
    "SegmenterConfig": "config",
    "WeightsReport": "weights",
    "build_detector": "detection",
    "build_segmenter": "segmentation",
    "check_detector_export": "export",
    "check_segmenter_export": "export",
    "collate_detection": "data",
    "collate_segmentation": "data",
    "dense_preset": "config",
    "detection_transforms": "transforms",
    "export_detector": "export",
    "export_segmenter": "export",
    "load_backbone_weights": "weights",
    "load_exported_detector": "export",
    "load_exported_segmenter": "export",
    "make_fashion_scenes": "scenes",
    "segment": "sliding",
    "segmentation_loss": "segmentation",
    "segmentation_transforms": "transforms",
}
# what a missing package of the dense extra means
_EXTRA = {"segmentation_models_pytorch", "pycocotools"}

__all__ = [
    "BackboneConfig",
    "COCO_TRAIN_MIN_SIZES",
    "CocoDetection",
    "CocoMetric",
    "DENSE_PRESETS",
    "DETECTOR_KINDS",
    "DenseBackbone",
    "DetectorConfig",
    "ExportedDetector",
    "ExportedSegmenter",
    "SEGMENTER_KINDS",
    "SegMetric",
    "SegmentationFolder",
    "Segmenter",
    "SegmenterConfig",
    "WeightsReport",
    "build_detector",
    "build_segmenter",
    "check_detector_export",
    "check_segmenter_export",
    "collate_detection",
    "collate_segmentation",
    "dense_preset",
    "detection_transforms",
    "export_detector",
    "export_segmenter",
    "load_backbone_weights",
    "load_exported_detector",
    "load_exported_segmenter",
    "make_fashion_scenes",
    "segment",
    "segmentation_loss",
    "segmentation_transforms",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datvit.dense' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as e:
        if e.name not in _EXTRA:
            raise
        raise ModuleNotFoundError(
            f"datvit.dense.{name} needs {e.name}: pip install 'datvit[dense]'", name=e.name
        ) from e
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what static tools (type checkers, the API reference) read
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
    from .export import (
        ExportedDetector,
        ExportedSegmenter,
        check_detector_export,
        check_segmenter_export,
        export_detector,
        export_segmenter,
        load_exported_detector,
        load_exported_segmenter,
    )
    from .metrics import CocoMetric, SegMetric
    from .scenes import make_fashion_scenes
    from .segmentation import Segmenter, build_segmenter, segmentation_loss
    from .sliding import segment
    from .transforms import detection_transforms, segmentation_transforms
    from .weights import WeightsReport, load_backbone_weights
