"""``datvit seg train|eval|predict|export``: semantic segmentation with a DAT backbone (UperNet or Semantic FPN from
segmentation_models_pytorch) on ADE20K-layout folders — trained by datvit's one engine (torchrun DDP, exact
resume, atomic checkpoints, summary.csv and curves); mIoU, per-class IoU and pixel accuracy."""

from __future__ import annotations

import argparse

from ._dense import register_dense

EPILOG = """examples:
  datvit seg train -c upernet_datpp_tiny_160k.yaml --data-dir /data/ADEChallengeData2016 --backbone-weights datpp_tiny.pth
  datvit seg train --data-dir my_seg --segmenter fpn --model dat_tiny --iters 20000 --crop-size 256
  torchrun --nproc_per_node 8 -m datvit seg train -c upernet_datpp_tiny_160k.yaml --data-dir /data/ADEChallengeData2016
  datvit seg eval --checkpoint output/seg/my-run/best.pth          # mIoU, per-class IoU, pixel accuracy
  datvit seg eval --checkpoint best.pth --mode slide --crop 512 --stride 341
  datvit seg predict room.jpg --checkpoint best.pth --output preds --json preds.json
  datvit seg export --checkpoint best.pth --output upernet.onnx --img-size 512 683   # checked against eager
  datvit seg predict room.jpg --checkpoint upernet.onnx --runtime onnx --output preds  # onnxruntime, CPU
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    register_dense(subparsers, "seg", "segmentation", __doc__, EPILOG)
