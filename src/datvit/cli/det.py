"""``datvit det train|eval|predict|export``: object detection and instance segmentation with a DAT backbone
(torchvision's Mask R-CNN, Faster R-CNN, RetinaNet) on COCO-format data — trained by datvit's one engine
(torchrun DDP, exact resume, atomic checkpoints, summary.csv and curves), evaluated with pycocotools."""

from __future__ import annotations

import argparse

from ._dense import register_dense

EPILOG = """examples:
  datvit det train -c mask_rcnn_datpp_tiny_1x.yaml --data-dir /data/coco --backbone-weights datpp_tiny.pth
  datvit det train --data-dir my_coco --detector retinanet --model dat_tiny --epochs 24 -b 4
  torchrun --nproc_per_node 8 -m datvit det train -c mask_rcnn_datpp_tiny_1x.yaml --data-dir /data/coco
  datvit det train --resume auto --experiment my-run              # continue exactly where it stopped
  datvit det eval --checkpoint output/det/my-run/best.pth         # box/mask mAP, mAP@50, per-class AP
  datvit det predict street.jpg photos/ --checkpoint best.pth --output preds --json preds.json
  datvit det export --checkpoint best.pth --format torchscript --output detector.pt   # any DAT backbone
  datvit det export --checkpoint best.pth --format onnx --output detector.onnx        # DAT v1 backbones
  datvit det predict photos/ --checkpoint detector.onnx --runtime onnx --output preds  # onnxruntime, CPU
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    register_dense(subparsers, "det", "detection", __doc__, EPILOG)
