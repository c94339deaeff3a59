"""torchvision's Mask R-CNN, Faster R-CNN and RetinaNet over a ``DenseBackbone`` and the authors' FPN.

The necks follow LeapLabTHU/DAT-Detection ``configs/_base_/models/`` (``docs/dense.md`` §Library API):

* Mask/Faster R-CNN: FPN on all four stages (strides 4–32) to 256 channels, plus P6 = a 3×3 stride-2 conv on C5
  (mmdet ``add_extra_convs='on_input'``; torchvision's default P6 is a stride-2 max-pool of P5).
* RetinaNet: FPN from stride 8 (``out_indices`` (1, 2, 3)), P6 = 3×3 s2 conv on C5, P7 = 3×3 s2 conv on P6 with no
  ReLU in between (mmdet ``relu_before_extra_convs=False``; torchvision's ``LastLevelP6P7`` applies one).

What stays torchvision's: smooth-L1 box losses (mmdet uses L1), the heads' layer shapes, GeneralizedRCNNTransform
(resize to ``min_size``/``max_size``, normalise, pad the batch to a multiple of 32 — DAT's deformable blocks attend
the zero padding as in the authors' code, which pads COCO batches the same way).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbone import DenseBackbone
from .config import DetectorConfig


class ConvExtraLevels(ExtraFPNBlock):
    """Extra FPN levels made by 3×3 stride-2 convs on the last backbone map C5 (mmdet ``add_extra_convs=
    'on_input'``): one level (P6, Mask R-CNN) or two (P6, P7 = conv(P6), RetinaNet), no ReLU between them."""

    def __init__(self, in_channels: int, out_channels: int, num_levels: int = 1):
        super().__init__()
        convs = [nn.Conv2d(in_channels, out_channels, 3, 2, 1)]
        convs += [nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(num_levels - 1)]
        self.convs = nn.ModuleList(convs)
        for conv in self.convs:  # mmdet's FPN init: xavier_uniform
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]):
        y = x[-1]
        for i, conv in enumerate(self.convs):
            y = conv(y)
            results.append(y)
            names.append(f"p{6 + i}")
        return results, names


class BackboneWithFPN(nn.Module):
    """DenseBackbone → FPN; ``out_channels`` as torchvision's detectors require."""

    def __init__(self, body: DenseBackbone, out_channels: int, extra: Optional[ExtraFPNBlock]):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _normalisation(cfg: DetectorConfig, body: DenseBackbone) -> tuple[list[float], list[float]]:
    mean = cfg.image_mean or body.pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN
    std = cfg.image_std or body.pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
    return list(mean), list(std)


def check_detection_inputs(images, targets, num_classes: int, channels: int = 3) -> None:
    """Raise ValueError naming the problem for inputs torchvision would fail on deep inside."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("detector input must be a non-empty list of C×H×W float image tensors")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or not img.is_floating_point():
            raise ValueError(
                f"image {i}: expected a C×H×W float tensor in 0..1, got "
                f"{getattr(img, 'dtype', type(img).__name__)} of shape {tuple(getattr(img, 'shape', ()))}"
            )
        if img.shape[0] != channels:
            raise ValueError(f"image {i}: expected {channels} channels, got {img.shape[0]}")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if boxes is None or labels is None:
            raise ValueError(f"target {i}: needs 'boxes' and 'labels'")
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"target {i}: boxes must be N×4 (xyxy) with N labels, got boxes {tuple(boxes.shape)}, "
                f"labels {tuple(labels.shape)}"
            )
        if boxes.numel() and bool(((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any()):
            raise ValueError(f"target {i}: degenerate boxes (zero width or height); the datasets skip them")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > num_classes):
            raise ValueError(f"target {i}: labels must be in 1..{num_classes}, got {labels.tolist()}")
        masks = t.get("masks")
        if masks is not None and (
            masks.shape[0] != boxes.shape[0] or tuple(masks.shape[-2:]) != tuple(images[i].shape[-2:])
        ):
            raise ValueError(
                f"target {i}: masks {tuple(masks.shape)} do not match {boxes.shape[0]} boxes on an "
                f"image of {tuple(images[i].shape[-2:])}"
            )


class _CheckedMixin:
    """Input checks before torchvision's forward."""

    def forward(self, images, targets=None):  # noqa: D401
        check_detection_inputs(
            images, targets if self.training else None, self.dense_num_classes, len(self.transform.image_mean)
        )
        return super().forward(images, targets)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(detector)`` compiles: the same detector as its torchvision class (a shallow copy
        sharing every submodule; the input checks above are Python, and TorchScript has no ``super()``). The
        scripted detector returns torchvision's scripted pair ``(losses, detections)``. Scripting replaces
        submodules by their scriptable forms in place (``DenseBackbone``'s): script a ``copy.deepcopy`` to keep the
        eager model as it is (``datvit.dense.export_detector`` does)."""
        base = next(c for c in type(self).__mro__ if c.__module__.startswith("torchvision."))
        clone = copy.copy(self)
        clone.__class__ = base
        clone._modules = OrderedDict(self._modules)  # a shallow copy shares the dict; keep ours as it is
        transform = copy.copy(self.transform)
        transform.__class__ = ScriptableRCNNTransform
        clone.transform = transform
        return clone


class ScriptableRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform as scripted detectors run it, resizing to exactly the size eager resizes
    to. torchvision's scripted (and traced) resize computes the scale factor in float32, eager in double: for a
    45×77 image and ``max_size`` 96, eager gives 96/77·77 = 96 columns, float32 95.99… → 95, a one-pixel different
    input and different detections. Here the eval-mode resize computes it in double as eager does; training and
    ``fixed_size`` keep torchvision's code."""

    def resize(
        self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        h, w = image.shape[-2], image.shape[-1]
        if self.training or target is not None or self.fixed_size is not None:
            size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
            image, target = _resize_image_and_masks(image, size, self.max_size, target, self.fixed_size)
            if target is not None:
                target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
            return image, target
        scale = min(float(self.min_size[-1]) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
        image = nn.functional.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
        return image, target


class DATMaskRCNN(_CheckedMixin, MaskRCNN):
    pass


class DATFasterRCNN(_CheckedMixin, FasterRCNN):
    pass


class DATRetinaNet(_CheckedMixin, RetinaNet):
    pass


def build_detector(cfg: DetectorConfig) -> nn.Module:
    """A torchvision detector for ``cfg`` (see the module docstring for the necks).

    train: ``model(images, targets)`` → dict of losses; eval: ``model(images)`` → list of dicts with
    ``boxes``, ``labels`` (1..K), ``scores`` and, for Mask R-CNN, ``masks`` (N×1×H×W float).
    """
    cfg = cfg.resolved()
    body = DenseBackbone(cfg.backbone)
    mean, std = _normalisation(cfg, body)
    strides = list(body.strides)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=mean, image_std=std)
    if cfg.kind == "retinanet":
        extra = ConvExtraLevels(body.out_channels[-1], cfg.fpn_channels, num_levels=2)
        strides += [strides[-1] * 2, strides[-1] * 4]
        backbone = BackboneWithFPN(body, cfg.fpn_channels, extra)
        # octave_base_scale × stride with 3 scales per octave (2^0, 2^(1/3), 2^(2/3)), ratios 0.5/1/2
        sizes = tuple(tuple(int(round(cfg.anchor_scale * s * 2 ** (k / 3))) for k in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        head = RetinaNetHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0], cfg.num_classes + 1)
        model = DATRetinaNet(
            backbone,
            cfg.num_classes + 1,
            anchor_generator=anchors,
            head=head,
            score_thresh=cfg.box_score_thresh,
            detections_per_img=cfg.box_detections_per_img,
            topk_candidates=cfg.retinanet_topk_candidates,
            **common,
        )
    else:
        extra = ConvExtraLevels(body.out_channels[-1], cfg.fpn_channels, num_levels=1)
        strides += [strides[-1] * 2]
        backbone = BackboneWithFPN(body, cfg.fpn_channels, extra)
        sizes = tuple((int(round(cfg.anchor_scale * s)),) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        names = [str(i) for i in range(len(body.strides))]  # RoIs pool from P2–P5, not P6 (as mmdet)
        box_pool = MultiScaleRoIAlign(names, 7, 2)
        box_head = TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size)
        kwargs = dict(
            rpn_anchor_generator=anchors,
            box_roi_pool=box_pool,
            box_head=box_head,
            box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes + 1),
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_score_thresh=cfg.box_score_thresh,
            box_detections_per_img=cfg.box_detections_per_img,
            **common,
        )
        if cfg.kind == "mask_rcnn":
            kwargs["mask_roi_pool"] = MultiScaleRoIAlign(names, 14, 2)
            kwargs["mask_predictor"] = MaskRCNNPredictor(256, 256, cfg.num_classes + 1)  # 4-conv head of 256
            model = DATMaskRCNN(backbone, None, **kwargs)
        else:
            model = DATFasterRCNN(backbone, None, **kwargs)
    model.dense_num_classes = cfg.num_classes
    model.dense_config = cfg
    model.transform.size_divisible = 32
    return model
