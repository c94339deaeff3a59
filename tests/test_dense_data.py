"""datvit.dense data: the scenes generator, COCO and ADE-layout datasets (incl. bad input), transforms, collate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.data import CorruptSample
from datvit.dense import (
    CocoDetection,
    SegmentationFolder,
    build_detector,
    collate_detection,
    collate_segmentation,
    detection_transforms,
    make_fashion_scenes,
    segmentation_transforms,
)
from dense_helpers import tiny_detector
from train_helpers import make_fashion_mnist


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=40, n_test=20)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("scenes") / "s"
    make_fashion_scenes(out, 8, 4, canvas=64, seed=0, fashion_mnist_dir=fmnist)
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != "scenes.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_scenes_are_deterministic_and_consistent(tmp_path, fmnist, scenes):
    again = make_fashion_scenes(tmp_path / "a", 8, 4, canvas=64, seed=0, fashion_mnist_dir=fmnist)
    assert _digest(tmp_path / "a") == _digest(scenes)
    make_fashion_scenes(tmp_path / "b", 8, 4, canvas=64, seed=1, fashion_mnist_dir=fmnist)
    assert _digest(tmp_path / "b") != _digest(scenes)
    assert again["splits"]["train"]["scenes"] == 8 and again["splits"]["train"]["instances"] >= 8
    # the instance masks and the semantic map tell the same story
    coco = CocoDetection(scenes, "train")
    seg = SegmentationFolder(scenes, "train")
    assert not coco.skipped and not seg.skipped and len(coco) == len(seg) == 8
    assert seg.class_names[0] == "background" and seg.class_names[1:] == coco.categories
    for i in range(len(coco)):
        image, target = coco[i]
        _, semantic = seg[i]
        union = target["masks"].bool().any(0)
        assert torch.equal(union, semantic > 0)
        for mask, label, box in zip(target["masks"], target["labels"], target["boxes"]):
            assert torch.all(semantic[mask.bool()] == label)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_fashion_scenes(scenes, 2, 2, canvas=64, fashion_mnist_dir=fmnist)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a scenes dataset"):
        make_fashion_scenes(tmp_path / "mine", 2, 2, canvas=64, fashion_mnist_dir=fmnist)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def _write_bad_coco(root: Path) -> None:
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name, size in (("ok.jpg", (40, 30)), ("empty.jpg", (40, 30)), ("wrong_size.jpg", (50, 30))):
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / "val" / name)
    images = [
        dict(id=1, file_name="ok.jpg", width=40, height=30),
        dict(id=2, file_name="empty.jpg", width=40, height=30),
        dict(id=3, file_name="missing.jpg", width=40, height=30),
        dict(id=4, file_name="wrong_size.jpg", width=40, height=30),
    ]
    poly = [[2, 2, 20, 2, 20, 20, 2, 20]]
    anns = [
        dict(id=1, image_id=1, category_id=7, bbox=[2, 2, 18, 18], segmentation=poly, iscrowd=0),
        dict(id=2, image_id=1, category_id=3, bbox=[5, 5, 0, 10], segmentation=poly, iscrowd=0),  # degenerate
        dict(
            id=4,
            image_id=1,
            category_id=3,
            bbox=[2, 2, 10, 10],
            iscrowd=0,
            segmentation=dict(size=[60, 80], counts="PPYo0"),
        ),  # mask size
        dict(id=5, image_id=1, category_id=3, bbox=[2, 2, 10, 10], segmentation=[], iscrowd=0),  # empty list
        dict(id=6, image_id=4, category_id=3, bbox=[2, 2, 10, 10], segmentation=poly, iscrowd=0),
        dict(
            id=7,
            image_id=1,
            category_id=3,
            bbox=[22, 2, 10, 20],
            iscrowd=1,
            segmentation=dict(
                size=[30, 40],
                counts=[662, 20, 10, 20, 10, 20, 10, 20, 10, 20, 10, 20, 10, 20, 10, 20, 10, 20, 10, 20, 248],
            ),
        ),  # crowd RLE
    ]
    cats = [dict(id=3, name="cat"), dict(id=7, name="dog")]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps(dict(images=images, annotations=anns, categories=cats))
    )


def test_coco_bad_input_is_skipped_and_counted(tmp_path):
    _write_bad_coco(tmp_path)
    ds = CocoDetection(tmp_path, "val")
    assert ds.categories == ["cat", "dog"]
    reasons = dict(ds.skipped)
    assert reasons == {
        "degenerate box (under 1 pixel inside the image)": 1,
        "mask size differs from its image": 1,
        "empty or malformed polygon list": 1,
        "missing image file": 1,
        "crowd annotation": 1,
    }
    assert "missing.jpg" in ds.skip_examples["missing image file"] and "annotation 4 of ok.jpg" in ds.skip_summary()
    assert len(ds) == 3 and ds.empty_images == 1
    image, target = ds[0]
    assert target["labels"].tolist() == [2] and target["masks"].shape == (1, 30, 40)
    assert target["masks"][0, 10, 10] == 1 and target["masks"][0, 25, 25] == 0
    bad = ds[2]
    assert isinstance(bad, CorruptSample) and "50×30" in bad.error and bad.path.endswith("wrong_size.jpg")
    assert len(CocoDetection(tmp_path, "val", skip_empty=True)) == 2
    crowd = CocoDetection(tmp_path, "val", include_crowd=True)
    _, target = crowd[0]
    assert (
        target["iscrowd"].tolist() == [0, 1]
        and target["masks"][1].sum() == 200
        and "crowd annotation" not in crowd.skipped
    )

    # what survives goes through a detector without trouble (one image without objects, one corrupt dropped)
    batch = collate_detection([ds[i] for i in range(len(ds))])
    assert len(batch.images) == 2 and len(batch.corrupt) == 1
    net = build_detector(tiny_detector("mask_rcnn", num_classes=2))
    net.train()
    losses = net(batch.images, batch.targets)
    assert all(torch.isfinite(v) for v in losses.values())

    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        CocoDetection(tmp_path, "train")
    (tmp_path / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances_val.json: not a valid JSON"):
        CocoDetection(tmp_path, "val")


def test_segmentation_folder_bad_maps_and_label_conventions(tmp_path):
    img_dir, ann_dir = tmp_path / "images" / "training", tmp_path / "annotations" / "training"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    labels = np.array([[0, 1, 2, 3], [150, 151, 255, 0]] * 2, dtype=np.uint8)
    for name, size in (("a", (4, 4)), ("rgb", (4, 4)), ("small", (8, 8)), ("nomap", (4, 4))):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(img_dir / f"{name}.jpg")
    Image.fromarray(labels, mode="L").save(ann_dir / "a.png")
    Image.fromarray(np.stack([labels] * 3, -1), mode="RGB").save(ann_dir / "rgb.png")
    Image.fromarray(labels, mode="L").save(ann_dir / "small.png")
    ds = SegmentationFolder(tmp_path, "training", reduce_zero_label=True, num_classes=151)
    assert len(ds) == 1 and dict(ds.skipped) == {
        "annotation map is not an index image (mode RGB)": 1,
        "annotation map size differs from its image": 1,
        "image without annotation map": 1,
    }
    assert ds.skip_examples["annotation map is not an index image (mode RGB)"].endswith("rgb.png")
    _, mask = ds[0]
    # reduce_zero_label: 0 → 255, k → k − 1 (255 stays)
    assert mask[0].tolist() == [255, 0, 1, 2] and mask[1].tolist() == [149, 150, 255, 255]
    plain = SegmentationFolder(tmp_path, "training")
    assert plain[0][1][1].tolist() == [150, 151, 255, 0]
    for name in ("a", "small"):
        (ann_dir / f"{name}.png").unlink()
    with pytest.raises(ValueError, match="rgb.png"):
        SegmentationFolder(tmp_path, "training")


def _write_maps(root: Path, maps: dict[str, np.ndarray], split: str = "training") -> None:
    for d in ("images", "annotations"):
        (root / d / split).mkdir(parents=True, exist_ok=True)
    for name, labels in maps.items():
        Image.fromarray(np.zeros((*labels.shape, 3), np.uint8)).save(root / "images" / split / f"{name}.jpg")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(root / "annotations" / split / f"{name}.png")


def test_segmentation_labels_outside_num_classes_are_named_when_the_dataset_is_built(tmp_path):
    good = np.array([[0, 1], [2, 255]])
    _write_maps(tmp_path / "one", {"a": good, "b": np.array([[0, 7], [3, 255]]), "c": good})
    with pytest.raises(ValueError) as e:
        SegmentationFolder(tmp_path / "one", "training", num_classes=4)
    message = str(e.value)
    assert message == (
        f"{tmp_path / 'one' / 'annotations' / 'training' / 'b.png'}: label 7 is outside the labels "
        "0..3 (255 ignored) of --num-classes 4"
    )
    assert len(SegmentationFolder(tmp_path / "one", "training", num_classes=8)) == 3
    # with reduce_zero_label the maps hold 1..num_classes: 7 is class 6
    with pytest.raises(ValueError, match="label 7 is outside the labels 1..4 \\(0 and 255 ignored\\)"):
        SegmentationFolder(tmp_path / "one", "training", num_classes=4, reduce_zero_label=True)
    assert len(SegmentationFolder(tmp_path / "one", "training", num_classes=7, reduce_zero_label=True)) == 3

    # every map labels 0..num_classes: ADE20K's layout read without --reduce-zero-label
    _write_maps(tmp_path / "ade", {"a": np.array([[0, 1], [2, 3]]), "b": np.array([[0, 3], [1, 255]])})
    (tmp_path / "ade" / "classes.txt").write_text("wall\nfloor\nsky\n")
    with pytest.raises(ValueError) as e:
        SegmentationFolder(tmp_path / "ade", "training")
    message = str(e.value)
    assert (
        "\n" not in message
        and "a.png: label 3 is outside the labels 0..2 (255 ignored) of the 3 classes of" in message
        and "classes.txt (also in 1 more of the 2 maps)" in message
    )
    assert message.endswith(
        "the labels run 0..3, as ADE20K's do where 0 is 'other': pass --reduce-zero-label to "
        "ignore 0 and count the classes from 1"
    )
    # classes.txt lists label 0 too under reduce_zero_label: 2 classes, labels 1..2 — 3 is still outside
    with pytest.raises(ValueError, match="label 3 is outside the labels 1..2 .* of the 2 classes of"):
        SegmentationFolder(tmp_path / "ade", "training", reduce_zero_label=True)
    assert len(SegmentationFolder(tmp_path / "ade", "training", reduce_zero_label=True, num_classes=3)) == 2


def test_coco_category_ids_the_model_cannot_hold_are_named(tmp_path):
    _write_bad_coco(tmp_path)
    ann_file = tmp_path / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())
    data["annotations"] += [
        dict(
            id=11,
            image_id=1,
            category_id=99,
            bbox=[2, 2, 10, 10],
            iscrowd=0,
            segmentation=[[2, 2, 20, 2, 20, 20, 2, 20]],
        ),
        dict(id=12, image_id=2, category_id=0, bbox=[2, 2, 10, 10], iscrowd=0),
    ]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path, "val", num_classes=2)
    assert str(e.value) == (
        f"{ann_file}: annotation 11 (image 1) has category_id 99, which is not one of the 2 "
        "category ids (3, 7) that --num-classes 2 holds as labels 1..2 (also 1 more annotations, "
        "ids 0)"
    )
    with pytest.raises(ValueError, match="category_id 99, .* that --num-classes \\(default 2\\) holds"):
        CocoDetection(tmp_path, "val")
    data["annotations"] = data["annotations"][:-2]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path, "val", num_classes=1)
    assert str(e.value) == (
        f"{ann_file}: 2 categories (ids 3, 7) but --num-classes 1: category 7 would be label 2; give --num-classes 2"
    )


def test_transforms_keep_boxes_masks_and_labels_together(scenes):
    torch.manual_seed(0)
    flip = detection_transforms(True, flip=1.0, crop_prob=0.0)
    ds = CocoDetection(scenes, "train")
    image, target = ds[0]
    fimage, ftarget = flip(image, target)
    w = image.shape[-1]
    torch.testing.assert_close(ftarget["boxes"][:, 0], w - target["boxes"][:, 2])
    assert torch.equal(ftarget["masks"], target["masks"].flip(-1)) and torch.equal(fimage, image.flip(-1))
    crop = detection_transforms(True, crop_prob=1.0, crop_resize=(64,), crop_range=(16, 24), max_size=64)
    for i in range(4):
        image, target = crop(*ds[i])
        assert image.shape[-1] <= 24 and image.shape[-2] <= 24
        assert target["boxes"].shape[0] == target["labels"].shape[0] == target["masks"].shape[0]
        if target["boxes"].numel():
            assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()

    seg = SegmentationFolder(
        scenes, "train", transforms=segmentation_transforms(True, crop=96, scale=(64, 64), ratio_range=(1.0, 1.0))
    )
    batch = collate_segmentation([seg[i] for i in range(3)])
    assert batch.images.shape == (3, 3, 96, 96) and batch.images.dtype == torch.float32
    assert batch.targets.dtype == torch.int64
    assert ((batch.targets != 255).sum((1, 2)) <= 64 * 64).all() and (batch.targets == 255).any()  # padding: ignore
    val = SegmentationFolder(scenes, "val", transforms=segmentation_transforms(False, scale=(128, 128)))
    image, mask = val[0]
    assert image.shape == (3, 128, 128) and mask.shape == (64, 64)  # the label stays at full size
