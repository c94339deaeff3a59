"""The authors' augmentation recipes as ``torchvision.transforms.v2`` pipelines (images + boxes/masks together).

Detection (LeapLabTHU/DAT-Detection ``configs/_base_/datasets/coco_instance.py`` + DETR-style AutoAugment): flip,
then with probability 0.5 resize the short side to 400/500/600 and crop a random 384–600 square-ish region, then a
multi-scale resize of the short side to 480–800 (step 32) with the long side ≤ 1333. The last resize is
torchvision's own: the detector's ``GeneralizedRCNNTransform`` picks ``min_size`` at random from a tuple in
training (``DetectorConfig.min_size``), so the data pipeline stops before it instead of resizing twice.

Segmentation (DAT-Segmentation ``configs/_base_/datasets/ade20k.py``, mmseg's pipeline): rescale to fit
2048×512 (long × short side) times a ratio in 0.5–2.0, random 512×512 crop (padded with 0 / label 255 where the
image is smaller), flip, photometric distortion, normalise. mmseg's ``cat_max_ratio=0.75`` crop retries are not
reproduced. Evaluation rescales the image only (to fit 2048×512) and keeps the label at its full size, as mmseg
scores at the original resolution (resize the logits back, ``segment(..., out_size=label.shape)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import query_size

from .config import COCO_TRAIN_MIN_SIZES  # noqa: F401  (re-exported: the detector's multi-scale sizes)


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: the largest size with long side ≤ max(scale) and short side ≤ min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RandomRescale(v2.Transform):
    """Rescale to fit ``scale`` (long, short) times a ratio drawn uniformly from ``ratio_range`` (mmseg ``Resize``
    with ``ratio_range``, keep_ratio=True). Masks are resized with nearest neighbour."""

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0)):
        super().__init__()
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        lo, hi = self.ratio_range
        ratio = lo + float(torch.rand(())) * (hi - lo)
        return dict(size=list(rescale_size(h, w, [s * ratio for s in self.scale])))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            TF.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        )


class RandomSizeCrop(v2.Transform):
    """Crop a region whose height and width are drawn independently from [min_size, max_size] (clipped to the
    image), at a random place — DETR's ``RandomSizeCrop``; boxes are cropped with the image."""

    def __init__(self, min_size: int = 384, max_size: int = 600):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        th = int(torch.randint(min(self.min_size, h), min(h, self.max_size) + 1, ()))
        tw = int(torch.randint(min(self.min_size, w), min(w, self.max_size) + 1, ()))
        top = int(torch.randint(0, h - th + 1, ()))
        left = int(torch.randint(0, w - tw + 1, ()))
        return dict(top=top, left=left, height=th, width=tw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


def detection_transforms(
    train: bool,
    flip: float = 0.5,
    crop_prob: float = 0.5,
    crop_resize: Sequence[int] = (400, 500, 600),
    crop_range: Sequence[int] = (384, 600),
    max_size: int = 1333,
) -> v2.Compose:
    """Train: flip + (with ``crop_prob``) DETR's resize-and-crop; boxes cropped away are removed with their labels
    and masks. The multi-scale resize is the detector's (``DetectorConfig.min_size`` as a tuple). Eval: nothing
    (the detector resizes to ``min_size``/``max_size``)."""
    if not train:
        return v2.Compose([])
    steps: list[Any] = [v2.RandomHorizontalFlip(flip)]
    if crop_prob > 0:
        steps.append(
            v2.RandomApply(
                [v2.RandomShortestSize(list(crop_resize), max_size=max_size), RandomSizeCrop(*crop_range)], p=crop_prob
            )
        )
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


class SegmentationEvalTransform:
    """Rescale the image to fit ``scale`` and normalise it; the label map stays at its full size."""

    def __init__(self, scale: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        self.scale = tuple(scale)
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        h, w = image.shape[-2:]
        size = rescale_size(h, w, self.scale)
        if size != (h, w):
            image = TF.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return self.normalize(image), mask

    def __repr__(self) -> str:
        return f"SegmentationEvalTransform(scale={self.scale})"


def segmentation_transforms(
    train: bool,
    crop: int | Sequence[int] = 512,
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    flip: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
):
    """The ADE20K recipe (module docstring); ``crop``, ``scale`` (long, short) and ``ratio_range`` set its sizes
    (the authors': 512, (2048, 512), (0.5, 2.0)). Returns a callable ``(image, mask) → (image, mask)``."""
    if not train:
        return SegmentationEvalTransform(scale, mean, std)
    steps: list[Any] = [
        RandomRescale(scale, ratio_range),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
        v2.RandomHorizontalFlip(flip),
    ]
    if photometric:
        # mmseg: brightness ±32/255, contrast and saturation 0.5–1.5, hue ±18° each with p 0.5, in random order
        steps.append(
            v2.RandomPhotometricDistort(
                brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.5
            )
        )
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    return v2.Compose(steps)
