"""datvit.dense metrics (COCO mAP, mIoU) on hand-computed cases, and segment() (padding, sliding windows)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datvit.dense import CocoMetric, SegMetric, build_segmenter, segment
from dense_helpers import tiny_segmenter


def _box_mask(box, h=40, w=50):
    m = torch.zeros(h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = [int(v) for v in box]
    m[y0:y1, x0:x1] = 1
    return m


def _targets():
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 25.0], [25.0, 5.0, 45.0, 30.0]]), torch.tensor([[10.0, 10.0, 30.0, 35.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([1])]
    return [dict(boxes=b, labels=lab, masks=torch.stack([_box_mask(x) for x in b])) for b, lab in zip(boxes, labels)]


def test_coco_metric_perfect_predictions_and_a_hand_computed_recall():
    targets = _targets()
    preds = [
        dict(
            boxes=t["boxes"],
            labels=t["labels"],
            scores=torch.linspace(1.0, 0.8, len(t["labels"])),
            masks=t["masks"][:, None].float(),
        )
        for t in targets
    ]
    metric = CocoMetric(["shirt", "bag", "shoe"])
    metric.update(preds, targets)
    out = metric.compute()
    assert out["bbox_mAP"] == pytest.approx(1.0) and out["bbox_mAP50"] == pytest.approx(1.0)
    assert out["segm_mAP"] == pytest.approx(1.0) and out["segm_mAP50"] == pytest.approx(1.0)
    assert out["per_class"]["shirt"]["bbox_AP"] == pytest.approx(1.0)
    assert math.isnan(out["per_class"]["shoe"]["bbox_AP"])  # no ground truth of that class

    # class 1 has two objects; only one is found, the other class is found exactly. COCO interpolates precision
    # at 101 recall points: precision 1 up to recall 0.5 → 51/101 for class 1, 1.0 for class 2.
    half = [
        dict(
            boxes=targets[0]["boxes"],
            labels=targets[0]["labels"],
            scores=torch.tensor([0.9, 0.8]),
            masks=targets[0]["masks"][:, None].float(),
        ),
        dict(
            boxes=torch.zeros(0, 4),
            labels=torch.zeros(0, dtype=torch.int64),
            scores=torch.zeros(0),
            masks=torch.zeros(0, 1, 40, 50),
        ),
    ]
    metric = CocoMetric(["shirt", "bag"])
    metric.update(half, targets)
    out = metric.compute()
    assert out["per_class"]["shirt"]["bbox_AP"] == pytest.approx(51 / 101)
    assert out["bbox_mAP"] == pytest.approx((51 / 101 + 1) / 2)

    # merging per-rank states gives the same numbers as one metric over everything
    a, b = CocoMetric(["shirt", "bag"]), CocoMetric(["shirt", "bag"])
    a.update(half[:1], targets[:1])
    b.update(half[1:], targets[1:])
    merged = CocoMetric(["shirt", "bag"]).merge([a.state(), b.state()]).compute()
    assert merged["bbox_mAP"] == pytest.approx(out["bbox_mAP"]) and merged["segm_mAP"] == pytest.approx(out["segm_mAP"])

    # a confident detection on a crowd region is ignored (COCO's rule), not counted as a false positive
    crowd_target = dict(
        targets[1],
        boxes=torch.tensor([[10.0, 10.0, 30.0, 35.0], [32.0, 2.0, 48.0, 38.0]]),
        labels=torch.tensor([1, 1]),
        iscrowd=torch.tensor([0, 1]),
    )
    crowd_target["masks"] = torch.stack([_box_mask(b) for b in crowd_target["boxes"]])
    pred = dict(boxes=crowd_target["boxes"].flip(0), labels=torch.tensor([1, 1]), scores=torch.tensor([1.0, 0.5]))
    for crowd, expected in ((True, 1.0), (False, 0.5)):
        metric = CocoMetric(["shirt"])
        t = (
            crowd_target
            if crowd
            else dict(
                crowd_target,
                boxes=crowd_target["boxes"][:1],
                labels=crowd_target["labels"][:1],
                iscrowd=torch.tensor([0]),
            )
        )
        metric.update([pred], [{k: v for k, v in t.items() if k != "masks"}])
        assert metric.compute()["bbox_mAP"] == pytest.approx(expected, abs=0.01)

    boxes_only = CocoMetric(["shirt", "bag"])
    boxes_only.update(
        [{k: v for k, v in p.items() if k != "masks"} for p in half],
        [{k: v for k, v in t.items() if k != "masks"} for t in targets],
    )
    res = boxes_only.compute()
    assert res["bbox_mAP"] == pytest.approx(out["bbox_mAP"]) and math.isnan(res["segm_mAP"])


def test_seg_metric_hand_computed():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 0]])
    metric = SegMetric(3)
    metric.update(pred, target)
    # confusion rows gt, cols pred: [[2,1,0],[0,2,0],[0,1,1]]; IoU = 2/3, 2/4, 1/2; 5 of 7 pixels right
    assert metric.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 1]]
    out = metric.compute()
    assert out["per_class_iou"] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert out["mIoU"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3) and out["aAcc"] == pytest.approx(5 / 7)
    logits = F.one_hot(pred, 3).permute(2, 0, 1)[None].float()
    again = SegMetric(3)
    again.update(logits, target[None])
    assert torch.equal(again.confusion, metric.confusion)
    perfect = SegMetric(4)
    perfect.update(target.clamp(max=2), target.clamp(max=2))
    res = perfect.compute()
    assert res["mIoU"] == 1.0 and res["aAcc"] == 1.0 and math.isnan(res["per_class_iou"][3])
    merged = SegMetric(3).merge([metric.state(), again.state()])
    assert torch.equal(merged.confusion, 2 * metric.confusion)
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(pred[:, :3], target)


class PixelModel(nn.Module):
    """A per-pixel model (1×1 conv) that, like smp, refuses sizes that are not multiples of 32."""

    output_stride = 32

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0, x.shape
        return self.conv(x)


def test_segment_pads_crops_and_slides():
    torch.manual_seed(0)
    model = PixelModel()
    x = torch.randn(2, 3, 75, 130)
    expected = model.conv(x)
    torch.testing.assert_close(segment(model, x), expected)
    torch.testing.assert_close(segment(model, x, mode="slide", crop=64, stride=40), expected)
    torch.testing.assert_close(segment(model, x[0], 5, mode="slide", crop=(48, 96), stride=(30, 50)), expected[0])
    assert segment(model, x, out_size=(150, 260)).shape == (2, 5, 150, 260)

    net = build_segmenter(tiny_segmenter("upernet")).eval()
    image = torch.randn(3, 50, 70)
    logits = segment(net, image, 4)
    assert logits.shape == (4, 50, 70)
    padded = F.pad(image[None], (0, 26, 0, 14))
    torch.testing.assert_close(logits, net(padded)[0, :, :50, :70])
    assert segment(net, image, 4, mode="slide", crop=32, stride=24).shape == (4, 50, 70)
    with pytest.raises(ValueError, match="expected 3"):
        segment(net, image, 3)
