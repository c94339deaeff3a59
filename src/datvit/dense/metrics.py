"""Dense metrics: COCO box/mask mAP through pycocotools, and mIoU / pixel accuracy from a confusion matrix.

Both accumulate per batch and merge across processes: ``CocoMetric.state()`` is a picklable dict (gather it, then
``merge``), ``SegMetric.confusion`` a K×K int64 tensor (``all_reduce`` it). Values are fractions in 0..1, as
pycocotools and mmseg print them (the papers quote them ×100).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch


def _quiet():
    """pycocotools prints progress ("loading annotations", the summary table) to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def _encode(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float().cpu().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


class CocoMetric:
    """Box and mask mAP (COCO's 0.5:0.95), mAP@50 and per-class AP of predictions against targets.

    ``categories``: class names for labels 1..K. ``update(predictions, targets)`` takes lists of dicts as
    torchvision's detectors give and the datasets yield (``boxes`` xyxy in the same image frame; ``labels``;
    ``scores``; ``masks`` N×1×H×W probabilities or N×H×W binary). Targets' ``iscrowd`` (optional) marks regions
    that are ignored, as COCO's evaluation does. Without masks on both sides the mask metrics are NaN.
    """

    def __init__(self, categories: Sequence[str], mask_threshold: float = 0.5):
        self.categories = list(categories)
        self.mask_threshold = mask_threshold
        self.reset()

    def reset(self) -> None:
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dets: list[dict] = []

    def update(self, predictions: Iterable[dict], targets: Iterable[dict]) -> None:
        for pred, target in zip(predictions, targets, strict=True):
            image_id = len(self.images) + 1
            masks = target.get("masks")
            h, w = (int(masks.shape[-2]), int(masks.shape[-1])) if masks is not None else (0, 0)
            self.images.append(dict(id=image_id, height=h, width=w))
            boxes = _xywh(target["boxes"])
            labels = torch.as_tensor(target["labels"]).tolist()
            crowd = torch.as_tensor(target.get("iscrowd", torch.zeros(len(labels)))).tolist()
            rles = _encode(masks.detach().cpu().numpy().astype(bool)) if masks is not None else [None] * len(boxes)
            for box, label, rle, c in zip(boxes, labels, rles, crowd):
                area = float(box[2] * box[3])
                if rle is not None:
                    from pycocotools import mask as mask_utils

                    area = float(mask_utils.area(dict(rle, counts=rle["counts"].encode("ascii"))))
                self.gts.append(
                    dict(
                        image_id=image_id, category_id=int(label), bbox=box, area=area, iscrowd=int(c), segmentation=rle
                    )
                )
            pmasks = pred.get("masks")
            prles = [None] * len(pred["boxes"])
            if pmasks is not None:
                pm = pmasks.detach().cpu()
                pm = (pm[:, 0] if pm.ndim == 4 else pm).float() > self.mask_threshold
                prles = _encode(pm.numpy())
            for box, label, score, rle in zip(
                _xywh(pred["boxes"]),
                torch.as_tensor(pred["labels"]).tolist(),
                torch.as_tensor(pred["scores"]).tolist(),
                prles,
            ):
                self.dets.append(
                    dict(image_id=image_id, category_id=int(label), bbox=box, score=float(score), segmentation=rle)
                )

    # -- distribution ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return dict(images=self.images, gts=self.gts, dets=self.dets)

    def merge(self, states: Iterable[dict[str, Any]]) -> "CocoMetric":
        """Replace this metric's contents by the union of ``states`` (e.g. gathered from every rank)."""
        self.reset()
        for st in states:
            offset = len(self.images)
            self.images += [dict(im, id=im["id"] + offset) for im in st["images"]]
            self.gts += [dict(g, image_id=g["image_id"] + offset) for g in st["gts"]]
            self.dets += [dict(d, image_id=d["image_id"] + offset) for d in st["dets"]]
        return self

    # -- evaluation -------------------------------------------------------------------------------------------------

    def _evaluate(self, iou_type: str) -> tuple[float, float, list[float]]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        k = len(self.categories)
        nan = float("nan")
        if iou_type == "segm" and (
            any(g["segmentation"] is None for g in self.gts)
            or any(d["segmentation"] is None for d in self.dets)
            or not self.gts
        ):
            return nan, nan, [nan] * k
        anns = []
        for i, g in enumerate(self.gts):
            ann = dict(g, id=i + 1)
            if iou_type == "bbox" or ann["segmentation"] is None:
                ann.pop("segmentation")
            anns.append(ann)
        dataset = dict(
            images=self.images,
            annotations=anns,
            categories=[dict(id=i + 1, name=n) for i, n in enumerate(self.categories)],
        )
        if not self.dets:
            return 0.0, 0.0, [0.0 if any(g["category_id"] == c + 1 for g in self.gts) else nan for c in range(k)]
        dets = [dict(d) for d in self.dets]
        for d in dets:
            if iou_type == "bbox" or d["segmentation"] is None:
                d.pop("segmentation")
            else:
                d.pop("bbox")  # loadRes derives the box and area from the mask for segm results
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            gt = COCO()
            gt.dataset = dataset
            gt.createIndex()
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        precision = ev.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
        per_class = []
        for c in range(k):
            p = precision[:, :, c, 0, -1]
            p = p[p > -1]
            per_class.append(float(p.mean()) if p.size else nan)
        stats = [float(s) if s >= 0 else nan for s in ev.stats[:2]]
        return stats[0], stats[1], per_class

    def compute(self) -> dict[str, Any]:
        """``{"bbox_mAP", "bbox_mAP50", "segm_mAP", "segm_mAP50", "per_class": {name: {"bbox_AP", "segm_AP"}}}``."""
        box, box50, box_pc = self._evaluate("bbox")
        segm, segm50, segm_pc = self._evaluate("segm")
        per_class = {name: dict(bbox_AP=b, segm_AP=s) for name, b, s in zip(self.categories, box_pc, segm_pc)}
        return dict(bbox_mAP=box, bbox_mAP50=box50, segm_mAP=segm, segm_mAP50=segm50, per_class=per_class)


class SegMetric:
    """mIoU, per-class IoU and pixel accuracy from a confusion matrix (rows: ground truth, columns: prediction).

    Pixels labelled ``ignore_index`` (or outside 0..K−1) are not counted. Classes that appear in neither the
    labels nor the predictions have IoU NaN and are left out of the mean, as mmseg's ``nanmean``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: B×K×H×W logits or B×H×W class indices (or unbatched); ``target``: B×H×W (or H×W) labels."""
        pred, target = torch.as_tensor(pred).detach().cpu(), torch.as_tensor(target).detach().cpu()
        if pred.ndim == target.ndim + 1:
            if pred.shape[-3] != self.num_classes:
                raise ValueError(f"logits have {pred.shape[-3]} classes, the metric {self.num_classes}")
            pred = pred.argmax(-3)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in size; "
                "resize the logits to the label (segment(..., out_size=label.shape[-2:]))"
            )
        target = target.long()
        pred = pred.long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        k = self.num_classes
        idx = target[valid] * k + pred[valid].clamp(0, k - 1)
        self.confusion += torch.bincount(idx, minlength=k * k).reshape(k, k)

    def state(self) -> dict[str, Any]:
        return dict(confusion=self.confusion.clone())

    def merge(self, states: Iterable[dict[str, Any]]) -> "SegMetric":
        self.confusion = sum((s["confusion"] for s in states), torch.zeros_like(self.confusion))
        return self

    def compute(self, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """``{"mIoU", "aAcc", "mAcc", "per_class_iou": [...], "per_class_acc": [...]}`` (fractions; NaN for
        classes absent from labels and predictions)."""
        cm = self.confusion.double()
        tp = cm.diag()
        gt, pred = cm.sum(1), cm.sum(0)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, math.nan))
        total = cm.sum()
        out = dict(
            mIoU=float(iou.nanmean()) if (union > 0).any() else math.nan,
            aAcc=float(tp.sum() / total) if total > 0 else math.nan,
            mAcc=float(acc.nanmean()) if (gt > 0).any() else math.nan,
            per_class_iou=iou.tolist(),
            per_class_acc=acc.tolist(),
        )
        if class_names is not None:
            out["class_names"] = list(class_names)
        return out
