"""Fashion-MNIST scenes: an offline detection / instance / semantic segmentation dataset built from real images.

Each scene places a few Fashion-MNIST items (read offline, ``datvit.data.fashion_mnist``) on a larger canvas at a
random scale and place, tinted, over a smooth random background; later items occlude earlier ones. An item's
instance mask is its pixels above ``threshold`` minus what later items cover; its box is the tight box of that
visible mask. The semantic map holds the top-most item's class + 1 per pixel and **0 for background**, a real
class (11 classes in all, no ``reduce_zero_label``; with ``reduce_zero_label=True`` the background would be
ignored instead and the 10 item classes become 0–9). Placements that would hide more than
``1 − min_visible`` of an earlier item (or leave the new one under ``min_area`` pixels) are redrawn.

Layout written (both forms share the files)::

    out_dir/images/<split>/000000.jpg          RGB scene           (ADE20K layout)
    out_dir/annotations/<split>/000000.png     index map 0..10     (ADE20K layout)
    out_dir/annotations/instances_<split>.json COCO boxes + RLE masks, categories 1..10
    out_dir/<split> -> images/<split>          COCO's DIR/<split>/ image folder (a symlink, or a copy)
    out_dir/classes.txt, out_dir/scenes.json   class names (background first); generation parameters

Splits ``train`` (items from Fashion-MNIST's 60,000 training images) and ``val`` (from its 10,000 test images), so
no item is in both. Deterministic: scene i of a split depends only on (seed, split, i). Size and difficulty suit
``make demo-dense``: at 128×128, batch 8, a Mask R-CNN with a 2.3M-parameter DAT backbone trains at ~6 images/s on
2 CPU cores, so a few minutes see ~2,000 scenes; 2–4 items of 28–62 px keep every object at least a few anchors
wide while classes stay Fashion-MNIST's (shirt vs. T-shirt vs. pullover vs. coat remain hard). Writing 2,500 scenes
takes about 10 s.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..data.fashion_mnist import CLASSES, FashionMNIST
from ..utils.files import atomic_write_text

SPLITS = {"train": "train", "val": "test"}  # scene split -> Fashion-MNIST split it draws items from


@dataclass(frozen=True)
class SceneConfig:
    canvas: int = 128
    items: tuple = (2, 4)  # items per scene, inclusive
    scale: tuple = (1.0, 2.2)  # item side = 28 px × scale
    threshold: int = 32  # item pixels above this (0..255) form its mask
    min_visible: float = 0.5  # every item keeps at least this fraction of its mask visible
    min_area: int = 40  # pixels
    jpeg_quality: int = 95


def _background(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A smooth random colour field (a 4×4 grid of dark colours upsampled bilinearly) plus pixel noise."""
    grid = (rng.uniform(0, 90, (4, 4, 3))).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((canvas, canvas), Image.BILINEAR), dtype=np.float32)
    return field + rng.normal(0, 6, field.shape).astype(np.float32)


def render_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, cfg: SceneConfig):
    """One scene: (RGB uint8 canvas×canvas×3, semantic map uint8, list of (class 0..9, visible mask bool))."""
    c = cfg.canvas
    img = _background(rng, c)
    semantic = np.zeros((c, c), dtype=np.uint8)
    instances: list[list] = []  # [class, full mask, visible mask]
    for _ in range(int(rng.integers(cfg.items[0], cfg.items[1] + 1))):
        for _attempt in range(10):
            k = int(rng.integers(len(images)))
            side = int(round(28 * rng.uniform(*cfg.scale)))
            side = min(side, c)
            item = np.asarray(Image.fromarray(images[k]).resize((side, side), Image.BILINEAR), dtype=np.float32)
            y, x = int(rng.integers(0, c - side + 1)), int(rng.integers(0, c - side + 1))
            mask = np.zeros((c, c), dtype=bool)
            mask[y : y + side, x : x + side] = item > cfg.threshold
            if mask.sum() < cfg.min_area:
                continue
            if any((vis & ~mask).sum() < cfg.min_visible * full.sum() for _, full, vis in instances):
                continue
            break
        else:
            continue
        tint = rng.uniform(0.35, 1.0, 3).astype(np.float32)
        tint /= tint.max()
        alpha = np.clip(item / cfg.threshold, 0, 1)[..., None]
        colour = tint * (70 + 185 * item[..., None] / 255)
        patch = img[y : y + side, x : x + side]
        img[y : y + side, x : x + side] = patch * (1 - alpha) + colour * alpha
        for inst in instances:
            inst[2] = inst[2] & ~mask
        instances.append([int(labels[k]), mask, mask.copy()])
        semantic[mask] = int(labels[k]) + 1
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return rgb, semantic, [(cls, vis) for cls, _, vis in instances if vis.any()]


def _coco_annotation(mask: np.ndarray, cls: int, ann_id: int, image_id: int) -> dict:
    from pycocotools import mask as mask_utils

    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=cls + 1,
        bbox=[x0, y0, x1 - x0, y1 - y0],
        area=int(mask.sum()),
        iscrowd=0,
        segmentation=dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii")),
    )


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "scenes.json").is_file():
            raise FileExistsError(
                f"{out_dir} exists and is not a scenes dataset made by datvit; choose an empty or "
                "new directory (nothing there was changed)"
            )
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds a scenes dataset; pass overwrite=True to regenerate it")
        for name in ("images", "annotations", *SPLITS):
            p = out_dir / name
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
    out_dir.mkdir(parents=True, exist_ok=True)


def make_fashion_scenes(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    canvas: int = 128,
    seed: int = 0,
    fashion_mnist_dir: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    progress: bool = False,
    **scene_kwargs,
) -> dict:
    """Write ``n_train`` + ``n_val`` scenes to ``out_dir`` in COCO and ADE20K layouts (module docstring).

    ``fashion_mnist_dir``: where the IDX files are (default: the Debian package's copy). ``scene_kwargs``:
    ``SceneConfig`` fields (items, scale, threshold, min_visible, min_area). Returns a summary dict (per split:
    scenes, instances; paths). Refuses to write into a non-empty directory it did not make.
    """
    cfg = SceneConfig(canvas=canvas, **{k: tuple(v) if isinstance(v, list) else v for k, v in scene_kwargs.items()})
    if canvas < 32:
        raise ValueError(f"canvas must be at least 32 pixels (a 28-pixel item must fit), got {canvas}")
    out = Path(out_dir)
    _prepare(out, overwrite)
    summary: dict = dict(out_dir=str(out), seed=seed, config=asdict(cfg), splits={})
    for split_index, (split, source) in enumerate(SPLITS.items()):
        n = n_train if split == "train" else n_val
        fm = FashionMNIST(fashion_mnist_dir, split=source)
        image_dir, ann_dir = out / "images" / split, out / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, ann_id = [], [], 1
        indices = range(n)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"scenes {split}", unit="scene")
        for i in indices:
            rng = np.random.default_rng([seed, split_index, i])
            rgb, semantic, instances = render_scene(rng, fm.images, fm.targets, cfg)
            name = f"{i:06d}"
            Image.fromarray(rgb).save(image_dir / f"{name}.jpg", quality=cfg.jpeg_quality)
            Image.fromarray(semantic, mode="L").save(ann_dir / f"{name}.png")
            images.append(dict(id=i + 1, file_name=f"{name}.jpg", width=canvas, height=canvas))
            for cls, mask in instances:
                annotations.append(_coco_annotation(mask, cls, ann_id, i + 1))
                ann_id += 1
        coco = dict(
            images=images,
            annotations=annotations,
            categories=[dict(id=c + 1, name=name) for c, name in enumerate(CLASSES)],
            info=dict(description=f"Fashion-MNIST scenes ({split}, from Fashion-MNIST {source}), seed {seed}"),
        )
        atomic_write_text(json.dumps(coco), out / "annotations" / f"instances_{split}.json")
        link = out / split
        try:
            os.symlink(os.path.join("images", split), link, target_is_directory=True)
        except OSError:
            shutil.copytree(image_dir, link)
        summary["splits"][split] = dict(scenes=n, instances=len(annotations))
    atomic_write_text("\n".join(("background",) + CLASSES) + "\n", out / "classes.txt")
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "scenes.json")
    return summary
