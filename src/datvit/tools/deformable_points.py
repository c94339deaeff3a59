"""Where the deformable attention looks: the sampled key positions of every D block drawn over the input image.

Each D block samples an Hk×Wk grid of keys per offset group: a uniform reference grid shifted by learnt offsets.
The figure shows, per D block, the reference points (grey) and the sampled positions (one colour per group)
joined by their offsets, in the input image's pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn


@dataclass
class DeformablePoints:
    """One D block: ``sampled`` and ``reference`` are G×Hk×Wk×2 arrays of (x, y) input-image pixel coordinates."""

    stage: int
    block: int
    sampled: np.ndarray
    reference: np.ndarray


def _to_pixels(points: torch.Tensor, map_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """(y, x) in [−1, 1] over a feature map (align_corners=True) → (x, y) pixels of the input image."""
    (mh, mw), (ih, iw) = map_hw, image_hw
    y = (points[..., 0] + 1) / 2 * (mh - 1)
    x = (points[..., 1] + 1) / 2 * (mw - 1)
    # a map cell i covers input pixels [i·s, (i+1)·s): its centre is (i + 0.5)·s
    return torch.stack([(x + 0.5) * iw / mw, (y + 0.5) * ih / mh], dim=-1).cpu().numpy()


def single_image_batch(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One preprocessed image (C×H×W or 1×C×H×W) as a batch of one, for a DAT model; ValueError otherwise."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image C×H×W (or 1×C×H×W), got shape {tuple(image.shape)}")
    if not hasattr(model, "forward_with_positions"):
        raise ValueError(f"{type(model).__name__} is not a datvit DAT model (no forward_with_positions)")
    return image


@torch.no_grad()
def collect_deformable_points(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, list[DeformablePoints]]:
    """Run ``model`` (a DAT or DAT++ with D blocks) on one preprocessed image (C×H×W or 1×C×H×W); return its
    logits (1×classes) and the sampled and reference points of every D block."""
    image = single_image_batch(model, image)
    was_training = model.training
    model.eval()
    try:
        logits, per_stage = model.forward_with_positions(image)
    finally:
        model.train(was_training)
    image_hw = (image.shape[-2], image.shape[-1])
    # positions are normalised over the feature map each stage works on
    map_sizes = [tuple(m.shape[-2:]) for m in model.forward_intermediates(image, intermediates_only=True)]
    out = []
    for stage, blocks in enumerate(per_stage):
        for block, entry in enumerate(blocks or []):
            if entry is None:
                continue
            sampled, reference = entry
            out.append(
                DeformablePoints(
                    stage,
                    block,
                    _to_pixels(sampled[0], map_sizes[stage], image_hw),
                    _to_pixels(reference[0], map_sizes[stage], image_hw),
                )
            )
    if not out:
        raise ValueError("this model has no deformable (D) blocks: nothing to draw")
    return logits, out


def plot_deformable_points(
    image: np.ndarray,
    points: Sequence[DeformablePoints],
    path: Union[str, Path],
    title: Optional[str] = None,
    max_blocks: int = 8,
) -> Path:
    """Write a PNG: one panel per D block (at most ``max_blocks``, the deepest last) over ``image`` (H×W or
    H×W×3, values in [0, 1] or uint8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(points)[-max_blocks:]
    cols = min(4, len(points))
    rows = -(-len(points) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.8 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, p in zip(axes.flat, points):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, alpha=0.6)
        ref = p.reference.reshape(-1, p.reference.shape[-1], 2)
        ax.scatter(ref[..., 0].ravel(), ref[..., 1].ravel(), s=4, c="0.6", marker=".", linewidths=0)
        for g in range(p.sampled.shape[0]):
            s, r = p.sampled[g].reshape(-1, 2), p.reference[g].reshape(-1, 2)
            color = cmap(g % 10)
            ax.plot(np.stack([r[:, 0], s[:, 0]]), np.stack([r[:, 1], s[:, 1]]), color=color, lw=0.5, alpha=0.6)
            ax.scatter(s[:, 0], s[:, 1], s=10, color=color, linewidths=0)
        ax.set_title(
            f"stage {p.stage + 1}, block {p.block + 1}: {p.sampled.shape[0]} group(s), "
            f"{p.sampled.shape[1]}×{p.sampled.shape[2]} keys",
            fontsize=8,
        )
    return save_panel_grid(fig, axes, len(points), image.shape[:2], title, path)


def save_panel_grid(
    fig: Any, axes: Any, used: int, image_hw: tuple[int, int], title: Optional[str], path: Union[str, Path]
) -> Path:
    """Finish a grid of per-block panels over one image (pixel limits, no ticks, unused panels hidden, the title)
    and write it as a PNG atomically; shared by the sampling-point and the attention figures."""
    import matplotlib.pyplot as plt

    from ..utils.files import atomic_savefig

    for ax in list(axes.flat)[:used]:
        ax.set_xlim(-0.5, image_hw[1] - 0.5)
        ax.set_ylim(image_hw[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path)
    plt.close(fig)
    return path
