"""Which sampled keys each query attends to: the second figure of the DAT paper, as data and as a PNG.

For every D block, the attention weights softmax(q·kᵀ/√c + B) between each query pixel of the stage's map and the
Hk×Wk keys sampled by each offset group. The fast path computes attention with SDPA and never materialises these
weights; here each D block's ``capture_attention`` flag makes it compute the softmax explicitly for one forward
and keep it (``layers/deformable_attention.py``), so the weights are those the block used: the test recomputes
the block's output from them.

Two views: for chosen queries (a star), their top-k sampled keys as circles whose area is the attention weight;
and every sampled point sized by the attention it receives from all queries of the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .deformable_points import _to_pixels, save_panel_grid, single_image_batch


@dataclass
class DeformableAttentionMap:
    """Attention of one D block for one image. Coordinates are (x, y) pixels of the model's input image.

    ``sampled``/``reference``: G×Hk×Wk×2 sampled key positions and their reference grid (as
    :class:`~datvit.tools.DeformablePoints`). ``query_cells``: Q×2 (row, col) of the chosen queries on the
    stage's ``map_size`` query map; ``query_pixels``: Q×2 their centres. ``head_weights``: Q×heads×Ns, the
    softmax of every head over its group's Ns = Hk·Wk keys (head h reads group h // (heads / G)).
    ``weights``: Q×G×Ns, the attention of each query to each sampled point averaged over all heads (each row sums
    to 1). ``received``: G×Ns, the attention each sampled point receives, averaged over every query of the map and
    every head (sums to 1).
    """

    stage: int
    block: int
    map_size: tuple[int, int]
    heads: int
    sampled: np.ndarray
    reference: np.ndarray
    query_cells: np.ndarray
    query_pixels: np.ndarray
    head_weights: np.ndarray
    weights: np.ndarray
    received: np.ndarray

    @property
    def groups(self) -> int:
        return int(self.sampled.shape[0])

    def top_keys(self, query: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` sampled points query ``query`` attends to most: (x, y) pixels K×2, weights K, groups K."""
        flat = self.weights[query].reshape(-1)
        order = np.argsort(-flat, kind="stable")[:k]
        points = self.sampled.reshape(self.groups, -1, 2).reshape(-1, 2)
        return points[order], flat[order], order // self.sampled[0, ..., 0].size


def deformable_blocks(model: nn.Module) -> list[tuple[int, int, nn.Module]]:
    """(stage, block, module) of every D block, 0-based."""
    from ..layers import DeformableAttention

    out = []
    for s, stage in enumerate(getattr(model, "stages", [])):
        for b, attn in enumerate(getattr(stage, "attns", [])):
            if isinstance(attn, DeformableAttention):
                out.append((s, b, attn))
    return out


def parse_blocks(spec: str, model: nn.Module) -> list[tuple[int, int]]:
    """``"3,4.2"`` (1-based: every D block of stage 3, block 2 of stage 4) → [(stage, block)] 0-based.

    A stage without D blocks or a block that is not one raises ValueError naming where the D blocks are.
    """
    blocks = deformable_blocks(model)
    by_stage: dict[int, list[int]] = {}
    for s, b, _ in blocks:
        by_stage.setdefault(s, []).append(b)
    where = ", ".join(str(s + 1) for s in sorted(by_stage)) or "none"
    chosen: list[tuple[int, int]] = []
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        try:
            parts = [int(p) for p in item.split(".")]
        except ValueError:
            raise ValueError(
                f"--blocks: {item!r} is not STAGE or STAGE.BLOCK (1-based numbers, e.g. 3 or 3.2)"
            ) from None
        if len(parts) > 2:
            raise ValueError(f"--blocks: {item!r} is not STAGE or STAGE.BLOCK (e.g. 3 or 3.2)")
        stage = parts[0] - 1
        if stage not in by_stage:
            raise ValueError(
                f"--blocks: stage {parts[0]} has no deformable (D) blocks; the stages with D blocks are {where}"
            )
        if len(parts) == 1:
            chosen += [(stage, b) for b in by_stage[stage]]
        elif parts[1] - 1 not in by_stage[stage]:
            spec_letters = getattr(model.stages[stage], "stage_spec", None)
            kind = (
                f"an {spec_letters[parts[1] - 1]} block"
                if spec_letters and 0 < parts[1] <= len(spec_letters)
                else "not a block"
            )
            raise ValueError(
                f"--blocks: stage {parts[0]} block {parts[1]} is {kind}; the D blocks of stage "
                f"{parts[0]} are {', '.join(str(b + 1) for b in by_stage[stage])}"
            )
        else:
            chosen.append((stage, parts[1] - 1))
    if not chosen:
        raise ValueError("--blocks: no block given")
    return list(dict.fromkeys(chosen))


def _cells_of(points_xy: np.ndarray, map_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """(x, y) input pixels → (row, col) of the map cell that covers them (clamped to the map)."""
    (mh, mw), (ih, iw) = map_hw, image_hw
    rows = np.clip(np.floor(points_xy[..., 1] * mh / ih), 0, mh - 1).astype(np.int64)
    cols = np.clip(np.floor(points_xy[..., 0] * mw / iw), 0, mw - 1).astype(np.int64)
    return np.stack([rows, cols], axis=-1)


@torch.no_grad()
def collect_deformable_attention(
    model: nn.Module,
    image: torch.Tensor,
    queries: Optional[Sequence[tuple[float, float]]] = None,
    *,
    top_queries: Optional[int] = None,
    blocks: Optional[Sequence[tuple[int, int]]] = None,
    return_logits: bool = False,
):
    """Attention weights of the D blocks of ``model`` on one preprocessed image (C×H×W or 1×C×H×W).

    ``queries``: (y, x) pixels of the input image; each block takes the query of the map cell that covers the
    pixel. ``top_queries``: instead, the N cells of each block's map that receive the most attention (the sampled
    points' received attention, each point credited to the cell it lies in). ``blocks``: (stage, block) 0-based
    (default: every D block). Returns a list of :class:`DeformableAttentionMap` (and the logits first with
    ``return_logits``). Raises ValueError for a query outside the image or a model without D blocks.
    """
    image = single_image_batch(model, image)
    ih, iw = int(image.shape[-2]), int(image.shape[-1])
    for y, x in queries or []:
        if not (0 <= y < ih and 0 <= x < iw):
            raise ValueError(
                f"query (y={y:g}, x={x:g}) is outside the {ih}×{iw} input image (y in 0..{ih - 1}, x in 0..{iw - 1})"
            )
    if queries and top_queries:
        raise ValueError("give either queries or top_queries, not both")
    if top_queries is not None and top_queries < 1:
        raise ValueError(f"top_queries must be at least 1, got {top_queries}")
    all_blocks = deformable_blocks(model)
    if not all_blocks:
        raise ValueError("this model has no deformable (D) blocks: nothing to draw")
    wanted = set(blocks) if blocks is not None else {(s, b) for s, b, _ in all_blocks}
    chosen = [(s, b, m) for s, b, m in all_blocks if (s, b) in wanted]
    missing = wanted - {(s, b) for s, b, _ in chosen}
    if missing:
        raise ValueError(f"not D blocks (stage, block; 1-based): {sorted((s + 1, b + 1) for s, b in missing)}")

    map_sizes: dict[int, tuple[int, int]] = {}
    handles = []
    for s, b, module in chosen:
        module.capture_attention = True
        handles.append(
            module.register_forward_hook(  # fast-path input: B×H×W×C
                lambda m, args, out: map_sizes.__setitem__(id(m), tuple(args[0].shape[1:3]))
            )
        )
    was_training, was_reference = model.training, getattr(model, "reference", False)
    try:
        model.eval()
        model.set_reference(False)  # the capture is on the fast path (the reference path has no flag)
        logits, per_stage = model.forward_with_positions(image)
        captured = {(s, b): module.captured_attention for s, b, module in chosen}
        sizes = {(s, b): map_sizes[id(module)] for s, b, module in chosen}
    finally:
        for h in handles:
            h.remove()
        for _, _, module in chosen:
            module.capture_attention = False
            module.captured_attention = None
        model.train(was_training)
        model.set_reference(was_reference)

    out = []
    for s, b, module in chosen:
        sampled, reference = per_stage[s][b]
        mh, mw = sizes[(s, b)]
        attn = captured[(s, b)][0].float()  # heads×HW×Ns
        heads, G = module.heads, module.groups
        ns = attn.shape[-1]
        per_group = attn.reshape(G, heads // G, mh * mw, ns)
        received = (per_group.sum(dim=(1, 2)) / (heads * mh * mw)).cpu().numpy()  # G×Ns, sums to 1
        sampled_px = _to_pixels(sampled[0], (mh, mw), (ih, iw))
        if top_queries:
            cells = _cells_of(sampled_px.reshape(-1, 2), (mh, mw), (ih, iw))
            score = np.zeros(mh * mw)
            np.add.at(score, cells[:, 0] * mw + cells[:, 1], received.reshape(-1))
            flat = np.argsort(-score, kind="stable")[: min(top_queries, mh * mw)]
            query_cells = np.stack([flat // mw, flat % mw], axis=-1)
        else:
            pts = np.array([(x, y) for y, x in (queries or [])], dtype=np.float64).reshape(-1, 2)
            query_cells = _cells_of(pts, (mh, mw), (ih, iw))
        index = torch.as_tensor(query_cells[:, 0] * mw + query_cells[:, 1], dtype=torch.long, device=attn.device)
        head_weights = attn[:, index].permute(1, 0, 2)  # Q×heads×Ns
        weights = head_weights.reshape(len(index), G, heads // G, ns).sum(2) / heads
        query_pixels = np.stack([(query_cells[:, 1] + 0.5) * iw / mw, (query_cells[:, 0] + 0.5) * ih / mh], -1)
        out.append(
            DeformableAttentionMap(
                stage=s,
                block=b,
                map_size=(mh, mw),
                heads=heads,
                sampled=sampled_px,
                reference=_to_pixels(reference[0], (mh, mw), (ih, iw)),
                query_cells=query_cells,
                query_pixels=query_pixels.reshape(-1, 2),
                head_weights=head_weights.cpu().numpy(),
                weights=weights.cpu().numpy(),
                received=received,
            )
        )
    return (logits, out) if return_logits else out


def plot_deformable_attention(
    image: np.ndarray,
    maps: Sequence[DeformableAttentionMap],
    path: Union[str, Path],
    mode: str = "queries",
    topk: int = 8,
    title: Optional[str] = None,
    cols: int = 4,
) -> Path:
    """Write a PNG, one panel per D block over ``image`` (H×W or H×W×3, in [0, 1] or uint8).

    ``mode="queries"``: each query as a star and its ``topk`` most attended sampled keys as circles of area
    proportional to the weight (one colour per query). ``mode="received"``: every sampled point as a circle of
    area proportional to the attention it receives (one colour per offset group).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if mode not in ("queries", "received"):
        raise ValueError(f"mode must be 'queries' or 'received', got {mode!r}")
    maps = list(maps)
    if not maps:
        raise ValueError("no deformable attention maps to draw")
    cols = min(cols, len(maps))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    query_colors = plt.get_cmap("tab10")
    group_colors = plt.get_cmap("Set1")
    for ax, m in zip(axes.flat, maps):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, alpha=0.55)
        g, hk, wk = m.sampled.shape[:3]
        if mode == "queries":
            biggest = max((float(m.weights[q].max()) for q in range(len(m.query_cells))), default=1.0)
            for q in range(len(m.query_cells)):
                color = query_colors(q % 10)
                pts, w, _ = m.top_keys(q, topk)
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    s=260 * w / max(biggest, 1e-12),
                    facecolors=(*color[:3], 0.35),
                    edgecolors=color,
                    linewidths=0.8,
                )
                qx, qy = m.query_pixels[q]
                ax.scatter([qx], [qy], marker="*", s=160, color=color, edgecolors="white", linewidths=0.7, zorder=5)
            what = f"{len(m.query_cells)} quer{'y' if len(m.query_cells) == 1 else 'ies'}, top-{topk} keys"
        else:
            biggest = float(m.received.max()) or 1.0
            for gi in range(g):
                pts = m.sampled[gi].reshape(-1, 2)
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    s=220 * m.received[gi] / biggest,
                    color=group_colors(gi % 9),
                    alpha=0.6,
                    linewidths=0,
                )
            what = f"{g}×{hk}×{wk} keys by attention received"
        ax.set_title(
            f"stage {m.stage + 1}, block {m.block + 1} ({m.map_size[0]}×{m.map_size[1]} map): {what}", fontsize=7
        )
    return save_panel_grid(fig, axes, len(maps), image.shape[:2], title, path)
