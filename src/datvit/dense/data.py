"""Dense datasets: COCO-format detection/instance segmentation and ADE20K-layout semantic segmentation folders.

Both check what they can from the annotation files and image headers when built, skip what is unusable and count
it (``.skipped``, a Counter of reasons; ``.skip_examples`` names the first file of each reason), so bad input never
reaches torchvision: empty annotation lists, degenerate boxes, masks whose size differs from their image, missing
images, segmentation maps that are not index images. Class labels the model cannot hold (a COCO ``category_id``
that is not among the file's categories, a map's label outside ``num_classes``) are no such local defect: they
mean the dataset and the run disagree (a wrong ``--num-classes``, a forgotten ``--reduce-zero-label``), so they
raise a ``ValueError`` of one line naming the file and the label when the dataset is built. What only decoding
reveals (a corrupt JPEG, an image whose size differs from the annotation file's) comes back as a ``CorruptSample``
naming the file, which ``collate_detection``/``collate_segmentation`` hand on for counting, as the classification
loader does.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from ..data.folder import IMG_EXTENSIONS, CorruptSample
from ..data.loader import Batch, split_corrupt
from ..utils.images import IMAGE_ERRORS, read_image

IGNORE_INDEX = 255
_INDEX_MODES = ("L", "P", "I", "I;16", "1")
# Label scans of this many maps or more show a progress bar (ADE20K's 20,210 training maps take ~30 s of one core).
_SCAN_PROGRESS_FROM = 1000


def _some(values: Sequence[Any], limit: int = 6) -> str:
    """'1, 2, 3' or '1, 2, 3, … (40 in all)'."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


class _SkipLog:
    """Counts skipped items per reason and remembers the first example of each."""

    def __init__(self):
        self.skipped: Counter = Counter()
        self.skip_examples: dict[str, str] = {}

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.skip_examples.setdefault(reason, example)

    def skip_summary(self) -> str:
        """One line: 'skipped 3 (2 degenerate box, e.g. …; 1 missing image file, e.g. …)' or ''."""
        if not self.skipped:
            return ""
        parts = [f"{n} {reason} (e.g. {self.skip_examples[reason]})" for reason, n in self.skipped.most_common()]
        return f"skipped {sum(self.skipped.values())}: " + "; ".join(parts)


def _poly_ok(poly: Any) -> bool:
    return isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0


class CocoDetection(Dataset, _SkipLog):
    """COCO-format detection / instance segmentation: ``root/<split>/`` images and
    ``root/annotations/instances_<split>.json``.

    Categories are numbered 1..K in the order of their COCO ids (``.categories`` holds the names, ``.category_ids``
    the COCO ids, so COCO's 80 classes with ids up to 90 become 1..80). Crowd annotations are left out of the
    targets (counted as 'crowd annotation'), except with ``include_crowd=True`` — for evaluation: the targets
    then carry ``iscrowd`` and ``CocoMetric`` ignores detections on crowd regions as COCO's evaluation does (never
    train on them: torchvision would take them for objects). ``skip_empty`` drops images without usable annotations (mmdet's
    ``filter_empty_gt`` for training; keep them for evaluation, where detections on them are false positives).

    ``__getitem__`` → ``(image, target)``: a ``tv_tensors.Image`` (uint8, 3×H×W) and ``{"boxes":
    tv_tensors.BoundingBoxes (XYXY), "labels": int64 1..K, "masks": tv_tensors.Mask (N×H×W uint8), "image_id"}``,
    passed through ``transforms(image, target)`` (a ``torchvision.transforms.v2`` pipeline), or a
    ``CorruptSample`` when the image cannot be decoded or its size differs from the annotation file's.

    An annotation whose ``category_id`` is not among the categories, or more categories than ``num_classes`` (the
    model's foreground classes, when given), raise a ``ValueError`` naming the file and the id.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Optional[Callable] = None,
        skip_empty: bool = False,
        with_masks: bool = True,
        include_crowd: bool = False,
        ann_file: Optional[str | os.PathLike] = None,
        image_dir: Optional[str | os.PathLike] = None,
        num_classes: Optional[int] = None,
    ):
        _SkipLog.__init__(self)
        self.root = Path(root)
        self.split = split
        self.ann_file = Path(ann_file) if ann_file else self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = Path(image_dir) if image_dir else self.root / split
        if not self.ann_file.is_file():
            raise FileNotFoundError(
                f"{self.ann_file}: COCO annotation file not found (a COCO-format dataset has "
                "DIR/<split>/ images and DIR/annotations/instances_<split>.json)"
            )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image folder of split {split!r} not found")
        try:
            with open(self.ann_file) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.ann_file}: not a valid JSON file ({e})") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("images"), list)
            or not isinstance(data.get("categories"), list)
        ):
            raise ValueError(f"{self.ann_file}: not a COCO annotation file (needs 'images' and 'categories' lists)")
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.category_ids = [int(c["id"]) for c in cats]
            self.categories = [str(c.get("name", c["id"])) for c in cats]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.ann_file}: every category needs an integer 'id'") from None
        if not self.categories:
            raise ValueError(f"{self.ann_file}: no categories")
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        annotations = [ann for ann in data.get("annotations") or [] if isinstance(ann, dict)]
        self._check_categories(annotations, label_of, num_classes)
        self.transforms = transforms
        self.with_masks = with_masks
        self.include_crowd = include_crowd

        self.empty_images = 0  # kept images without annotations (skip_empty=False)
        per_image: dict[Any, list] = {}
        for ann in annotations:
            per_image.setdefault(ann.get("image_id"), []).append(ann)
        self.samples: list[dict[str, Any]] = []
        for info in data["images"]:
            try:
                image_id, name = info["id"], str(info["file_name"])
                width, height = int(info["width"]), int(info["height"])
            except (KeyError, TypeError, ValueError):
                self.skip("image entry without id/file_name/width/height", f"{self.ann_file}: {str(info)[:80]}")
                continue
            path = self.image_dir / name
            if not path.is_file():
                self.skip("missing image file", str(path))
                continue
            anns = []
            for ann in per_image.get(image_id, []):
                kept = self._check_annotation(ann, width, height, label_of, name)
                if kept is not None:
                    anns.append(kept)
            if not anns:
                if skip_empty:
                    self.skip("image without usable annotations", str(path))
                    continue
                self.empty_images += 1
            self.samples.append(dict(id=image_id, path=str(path), width=width, height=height, anns=anns))
        if not self.samples:
            raise ValueError(f"{self.ann_file}: no usable images in split {split!r} ({self.skip_summary()})")

    def _check_categories(self, annotations: list[dict], label_of: dict, num_classes: Optional[int]) -> None:
        """Labels are 1..K in the order of the category ids: an id outside them, or K above the model's classes,
        is a dataset that does not fit the run, not an annotation to skip."""
        k = len(self.category_ids)
        held = f"--num-classes {num_classes}" if num_classes is not None else f"--num-classes (default {k})"
        unknown = [ann for ann in annotations if ann.get("category_id") not in label_of]
        if unknown:
            first = unknown[0]
            others = sorted({str(a.get("category_id")) for a in unknown[1:]})
            more = f" (also {len(unknown) - 1} more annotations, ids {_some(others)})" if others else ""
            raise ValueError(
                f"{self.ann_file}: annotation {first.get('id')} (image {first.get('image_id')}) has "
                f"category_id {first.get('category_id')}, which is not one of the {k} category ids "
                f"({_some(self.category_ids)}) that {held} holds as labels 1..{k}{more}"
            )
        if num_classes is not None and k > num_classes:
            raise ValueError(
                f"{self.ann_file}: {k} categories (ids {_some(self.category_ids)}) but --num-classes "
                f"{num_classes}: category {self.category_ids[num_classes]} would be label "
                f"{num_classes + 1}; give --num-classes {k}"
            )

    def _check_annotation(self, ann: dict, width: int, height: int, label_of: dict, name: str) -> Optional[dict]:
        where = f"annotation {ann.get('id')} of {name}"
        crowd = int(bool(ann.get("iscrowd")))
        if crowd and not self.include_crowd:
            self.skip("crowd annotation", where)
            return None
        label = label_of[ann.get("category_id")]
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            self.skip("missing or malformed bbox", where)
            return None
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if not (np.isfinite([x, y, w, h]).all() and x1 - x0 >= 1 and y1 - y0 >= 1):
            self.skip("degenerate box (under 1 pixel inside the image)", f"{where} (bbox {bbox})")
            return None
        seg = ann.get("segmentation")
        if self.with_masks:
            if isinstance(seg, list):
                if not seg or not all(_poly_ok(p) for p in seg):
                    self.skip("empty or malformed polygon list", where)
                    return None
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if [int(v) for v in seg["size"]] != [height, width]:
                    self.skip(
                        "mask size differs from its image", f"{where} (mask {seg['size']}, image {[height, width]})"
                    )
                    return None
            else:
                self.skip("no segmentation (needed for masks)", where)
                return None
        return dict(box=[x0, y0, x1, y1], label=label, segmentation=seg, iscrowd=crowd)

    def __len__(self) -> int:
        return len(self.samples)

    def _decode_masks(self, anns: list, height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            with warnings.catch_warnings():  # pycocotools 2.0.11 trips numpy 2's __array__ copy deprecation
                warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
                masks[i] = mask_utils.decode(rle)
        return masks

    def __getitem__(self, index: int):
        s = self.samples[index]
        try:
            img = read_image(s["path"], "RGB")
        except IMAGE_ERRORS as e:
            return CorruptSample(s["path"], f"{type(e).__name__}: {e}")
        if img.size != (s["width"], s["height"]):
            return CorruptSample(
                s["path"],
                f"image is {img.size[0]}×{img.size[1]} but {self.ann_file.name} says {s['width']}×{s['height']}",
            )
        h, w = s["height"], s["width"]
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        anns = s["anns"]
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = dict(
            boxes=tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            labels=torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            image_id=s["id"],
        )
        if self.include_crowd:
            target["iscrowd"] = torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64)
        if self.with_masks:
            try:
                target["masks"] = tv_tensors.Mask(torch.from_numpy(self._decode_masks(anns, h, w)))
            except Exception as e:  # noqa: BLE001 - pycocotools raises several types on malformed RLE
                return CorruptSample(s["path"], f"cannot decode its masks: {e}")
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.root)!r}, split={self.split!r}, {len(self)} images, "
            f"{len(self.categories)} categories)"
        )


def read_class_names(path: Path) -> Optional[list[str]]:
    """One class name per line (``classes.txt``), or None when the file is absent."""
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class SegmentationFolder(Dataset, _SkipLog):
    """Semantic segmentation in ADE20K's layout: ``root/images/<split>/*.jpg`` and ``root/annotations/<split>/
    <same stem>.png`` index maps (one class index per pixel, ``255`` = ignore).

    ``reduce_zero_label`` (ADE20K: its 0 means "other") maps 0 → 255 and every other label k → k − 1, as mmseg.
    Class names come from ``class_names``, else ``root/classes.txt`` (which lists label 0 too when
    ``reduce_zero_label``). ``num_classes`` (default: from the class names): every map is read once when the
    dataset is built, and a label outside ``0..num_classes − 1`` (after ``reduce_zero_label``) other than 255
    raises a ``ValueError`` naming the file, the label and ``--num-classes``, with the hint to pass
    ``--reduce-zero-label`` when the labels run 0..num_classes. Image/map pairs whose map is not an index image
    (e.g. an RGB colour rendering) or whose size differs from the image are skipped and counted; when every map is
    such, the error names one.

    ``__getitem__`` → ``(image tv_tensors.Image uint8 3×H×W, mask tv_tensors.Mask int64 H×W)`` through
    ``transforms(image, mask)``, or a ``CorruptSample``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "training",
        reduce_zero_label: bool = False,
        transforms: Optional[Callable] = None,
        num_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        _SkipLog.__init__(self)
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / "images" / split
        self.ann_dir = self.root / "annotations" / split
        for d in (self.image_dir, self.ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"{d}: not found (a segmentation folder has DIR/images/<split>/*.jpg and "
                    "DIR/annotations/<split>/*.png)"
                )
        self.reduce_zero_label = reduce_zero_label
        self.transforms = transforms
        self.class_names = list(class_names) if class_names else read_class_names(self.root / "classes.txt")
        self._classes_from = f"--num-classes {num_classes}"
        if not num_classes and self.class_names:
            num_classes = len(self.class_names) - (1 if reduce_zero_label and not class_names else 0)
            self._classes_from = (
                f"the {num_classes} classes of {self.root / 'classes.txt'}"
                if not class_names
                else f"the {num_classes} class names given"
            )
        self.num_classes = num_classes or None
        self.samples: list[tuple[str, str]] = []
        for image_path in sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMG_EXTENSIONS):
            ann_path = self.ann_dir / (image_path.stem + ".png")
            if not ann_path.is_file():
                self.skip("image without annotation map", str(ann_path))
                continue
            try:
                with Image.open(ann_path) as a, Image.open(image_path) as im:
                    ann_mode, ann_size, image_size = a.mode, a.size, im.size
            except IMAGE_ERRORS as e:
                self.skip("unreadable image or map", f"{image_path.name}: {e}")
                continue
            if ann_mode not in _INDEX_MODES:
                self.skip(f"annotation map is not an index image (mode {ann_mode})", str(ann_path))
                continue
            if ann_size != image_size:
                self.skip(
                    "annotation map size differs from its image",
                    f"{ann_path} ({ann_size[0]}×{ann_size[1]} vs {image_size[0]}×{image_size[1]})",
                )
                continue
            self.samples.append((str(image_path), str(ann_path)))
        if not self.samples:
            detail = self.skip_summary() or "no images"
            raise ValueError(
                f"{self.image_dir}: no usable image/annotation pairs ({detail}); annotation maps must "
                "be single-channel PNGs of class indices, not colour renderings"
            )
        if self.num_classes is not None:
            self._check_labels()

    def _check_labels(self) -> None:
        """Read every map once: a label the model cannot hold (out of range after ``reduce_zero_label``, not the
        ignore index) means the dataset and the run disagree, found here rather than as a silently ignored class
        or a loss that is not finite."""
        n = self.num_classes
        maps = [ann for _, ann in self.samples]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
            present = list(
                tqdm(
                    pool.map(_labels_in_map, maps),
                    total=len(maps),
                    desc=f"labels of {self.split}",
                    leave=False,
                    dynamic_ncols=True,
                    disable=len(maps) < _SCAN_PROGRESS_FROM,
                )
            )
        bad = []
        for path, labels in zip(maps, present):
            encoded = self.encode_labels(labels)
            outside = labels[(encoded != IGNORE_INDEX) & ((encoded < 0) | (encoded >= n))]
            if outside.size:
                bad.append((path, outside))
        if not bad:
            return
        path, outside = bad[0]
        valid = f"1..{n} (0 and 255 ignored)" if self.reduce_zero_label else f"0..{n - 1} (255 ignored)"
        message = f"{path}: label {int(outside.max())} is outside the labels {valid} of {self._classes_from}" + (
            f" (also in {len(bad) - 1} more of the {len(maps)} maps)" if len(bad) > 1 else ""
        )
        everything = np.unique(np.concatenate(present))
        everything = everything[everything != IGNORE_INDEX]
        if not self.reduce_zero_label and everything.min() == 0 and everything.max() == n:
            message += (
                f"; the labels run 0..{n}, as ADE20K's do where 0 is 'other': pass --reduce-zero-label to "
                "ignore 0 and count the classes from 1"
            )
        raise ValueError(message)

    def __len__(self) -> int:
        return len(self.samples)

    def encode_labels(self, labels: np.ndarray) -> np.ndarray:
        """A map's labels as the model's classes: ``reduce_zero_label`` ignores 0 and shifts the rest down."""
        labels = labels.astype(np.int64)
        if self.reduce_zero_label:
            labels = np.where(labels == 0, IGNORE_INDEX, labels - 1)
            labels[labels == IGNORE_INDEX - 1] = IGNORE_INDEX
        return labels

    def __getitem__(self, index: int):
        image_path, ann_path = self.samples[index]
        try:
            img = read_image(image_path, "RGB")
            with open(ann_path, "rb") as f:
                ann = Image.open(f)
                ann.load()
        except IMAGE_ERRORS as e:
            return CorruptSample(image_path, f"{type(e).__name__}: {e}")
        if ann.mode not in _INDEX_MODES or ann.size != img.size:
            return CorruptSample(ann_path, f"not an index map of the image's size (mode {ann.mode}, {ann.size})")
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(self.encode_labels(np.asarray(ann))))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"SegmentationFolder({str(self.root)!r}, split={self.split!r}, {len(self)} images)"


def _labels_in_map(path: str) -> np.ndarray:
    """The distinct labels of an index map (for 8-bit maps from Pillow's histogram, without sorting pixels)."""
    with Image.open(path) as im:
        if im.mode in ("L", "P"):
            return np.flatnonzero(im.histogram()[:256])
        return np.unique(np.asarray(im)).astype(np.int64)


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def collate_detection(batch: Sequence[Any]) -> Batch:
    """``Batch(images, targets, corrupt)``: images as a list of float 3×H×W tensors in 0..1 (sizes may differ; the
    detector resizes and pads), targets as a list of dicts of plain tensors (boxes float XYXY, labels int64,
    masks uint8), the ``CorruptSample``s for counting."""
    good, bad = split_corrupt(batch)
    if not good:
        return Batch(None, None, bad)
    images, targets = [], []
    for image, target in good:
        image = _plain(image)
        images.append(image.float() / 255 if image.dtype == torch.uint8 else image.float())
        out = {k: _plain(v) for k, v in target.items()}
        out["boxes"] = out["boxes"].float().reshape(-1, 4)
        if "masks" in out:
            out["masks"] = out["masks"].to(torch.uint8)
        targets.append(out)
    return Batch(images, targets, bad)


def collate_segmentation(batch: Sequence[Any]) -> Batch:
    """``Batch(images, masks, corrupt)``: stacked B×3×H×W float images and B×H×W int64 masks when all have one size
    (training crops), else lists (whole-image evaluation); uint8 images become floats in 0..1."""
    good, bad = split_corrupt(batch)
    if not good:
        return Batch(None, None, bad)
    images = [_plain(i) for i, _ in good]
    images = [i.float() / 255 if i.dtype == torch.uint8 else i for i in images]
    masks = [_plain(m).long() for _, m in good]
    if len({tuple(i.shape) for i in images}) == 1 and len({tuple(m.shape) for m in masks}) == 1:
        return Batch(torch.stack(images), torch.stack(masks), bad)
    return Batch(images, masks, bad)
