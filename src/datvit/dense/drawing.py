"""Predictions drawn over images as PNGs (``datvit det|seg predict`` and the dense demo's report): boxes with
class and score, instance masks, and semantic maps blended over the image — matplotlib's object API on the Agg
canvas (no display needed), written atomically."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..utils.files import atomic_savefig


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in 0..1 (tab20, then hues); index 0 of a semantic map is drawn transparent
    when it is the background."""
    from matplotlib import colormaps

    base = colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    if n <= 20:
        return base[:n]
    extra = colormaps["hsv"](np.linspace(0, 1, n - 20, endpoint=False))[:, :3]
    return np.concatenate([base, extra])


def _figure(width: int, height: int, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = max(1.0, 256 / max(width, height))  # small images are enlarged so labels stay readable
    fig = Figure(figsize=(panels * width * scale / 100, height * scale / 100 + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _draw_detections_on(
    ax: Any, image: np.ndarray, pred: dict[str, torch.Tensor], class_names: Sequence[str], title: Optional[str] = None
) -> None:
    from matplotlib.patches import Rectangle

    colors = palette(max(len(class_names), 1))
    shown = image.astype(np.float32) / 255.0
    masks = pred.get("masks")
    labels = pred["labels"].tolist()
    if masks is not None and len(masks):
        m = masks[:, 0].numpy() if masks.dim() == 4 else masks.numpy()
        for mask, label in zip(m, labels):
            on = mask > 0.5
            shown[on] = 0.5 * shown[on] + 0.5 * colors[(label - 1) % len(colors)]
    ax.imshow(shown)
    for box, label, score in zip(pred["boxes"].tolist(), labels, pred["scores"].tolist()):
        x1, y1, x2, y2 = box
        color = colors[(label - 1) % len(colors)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, edgecolor=color))
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        ax.text(
            x1,
            y1,
            f"{name} {score:.2f}",
            fontsize=6,
            color="white",
            va="bottom",
            bbox=dict(facecolor=color, alpha=0.8, pad=0.5, lw=0),
        )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def _draw_segmentation_on(
    ax: Any, image: np.ndarray, classes: torch.Tensor, class_names: Sequence[str], title: Optional[str] = None
) -> None:
    colors = palette(max(len(class_names), 1))
    shown = image.astype(np.float32) / 255.0
    cls = classes.numpy()
    for c in np.unique(cls):
        if c == 255 or c >= len(colors):
            continue
        if class_names and class_names[c].lower() in ("background", "bg"):
            continue
        on = cls == c
        shown[on] = 0.4 * shown[on] + 0.6 * colors[c]
    ax.imshow(shown)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def _draw_over(image: Any, path: str | os.PathLike, draw: Callable[[Any, np.ndarray], None]) -> None:
    """A PNG of ``image`` (PIL) at its own size with ``draw(axes, pixels)`` over it."""
    arr = np.asarray(image.convert("RGB"))
    fig = _figure(arr.shape[1], arr.shape[0])
    draw(fig.add_axes((0, 0, 1, 1)), arr)
    atomic_savefig(fig, path)


def draw_detections(
    image: Any, pred: dict[str, torch.Tensor], class_names: Sequence[str], path: str | os.PathLike
) -> None:
    """``image`` (PIL) with ``pred`` (boxes xyxy, labels 1..K, scores, optional masks N×1×H×W) drawn over it."""
    _draw_over(image, path, lambda ax, arr: _draw_detections_on(ax, arr, pred, class_names))


def draw_segmentation(image: Any, classes: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """``image`` (PIL) with the class map blended over it (a class named 'background' stays clear)."""
    _draw_over(image, path, lambda ax, arr: _draw_segmentation_on(ax, arr, classes, class_names))


def draw_grid(panels: Sequence[dict[str, Any]], path: str | os.PathLike, columns: int = 4) -> None:
    """Several panels in one PNG (the demo report): each ``{"image": HxWx3 uint8, "title": str}`` plus either
    ``"detections"`` (+ ``"class_names"``) or ``"classes"`` (+ ``"class_names"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = (len(panels) + columns - 1) // columns
    fig = Figure(figsize=(2.6 * columns, 2.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        if "detections" in panel:
            _draw_detections_on(ax, panel["image"], panel["detections"], panel["class_names"], panel.get("title"))
        else:
            _draw_segmentation_on(ax, panel["image"], panel["classes"], panel["class_names"], panel.get("title"))
    fig.tight_layout()
    atomic_savefig(fig, path)
