"""Tiny dense-model configurations shared by the tests/test_dense_*.py files."""

from __future__ import annotations

import torch

from datvit.dense import BackboneConfig, DetectorConfig, SegmenterConfig

# DAT v1 and DAT++ small enough that a detector step on 64×96 images takes a fraction of a second.
TINY_V1 = dict(
    img_size=32,
    dim_stem=16,
    dims=[16, 32, 64, 128],
    depths=[1, 1, 2, 1],
    heads=[1, 2, 4, 8],
    groups=[-1, -1, 1, 2],
    window_sizes=[4, 4, 4, 4],
    stage_spec=[["L"], ["L"], ["L", "D"], ["D"]],
)
TINY_PP = dict(
    dim_stem=16,
    dims=[16, 32, 64, 128],
    depths=[1, 2, 2, 1],
    heads=[1, 2, 4, 8],
    groups=[1, 1, 2, 2],
    stage_spec=[["N"], ["N", "D"], ["N", "D"], ["D"]],
)
TINY = {"dat_tiny": TINY_V1, "datpp_tiny": TINY_PP}


def tiny_backbone(model: str = "dat_tiny", **kw) -> BackboneConfig:
    return BackboneConfig(model=model, model_kwargs=TINY.get(model, {}), **kw)


def tiny_detector(kind: str, model: str = "dat_tiny", num_classes: int = 3, **kw) -> DetectorConfig:
    out = (1, 2, 3) if kind == "retinanet" else (0, 1, 2, 3)
    backbone = kw.pop("backbone", None) or tiny_backbone(model, out_indices=out)
    return DetectorConfig(
        kind,
        backbone,
        num_classes=num_classes,
        fpn_channels=32,
        min_size=64,
        max_size=96,
        representation_size=64,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        box_detections_per_img=10,
        retinanet_topk_candidates=50,
        **kw,
    )


def tiny_segmenter(kind: str, model: str = "dat_tiny", num_classes: int = 4, **kw) -> SegmenterConfig:
    backbone = kw.pop("backbone", None) or tiny_backbone(model)
    return SegmenterConfig(
        kind, backbone, num_classes=num_classes, decoder_channels=32, fpn_channels=32, aux_channels=16, **kw
    )


def detection_batch(sizes=((60, 80), (50, 45)), num_classes: int = 3):
    """Images of different sizes, the first with two objects (boxes + masks), the second with none."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    targets = []
    for i, (h, w) in enumerate(sizes):
        if i % 2:
            targets.append(
                dict(
                    boxes=torch.zeros(0, 4),
                    labels=torch.zeros(0, dtype=torch.int64),
                    masks=torch.zeros(0, h, w, dtype=torch.uint8),
                )
            )
            continue
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 45.0, 30.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append(dict(boxes=boxes, labels=torch.tensor([1, num_classes]), masks=masks))
    return images, targets
