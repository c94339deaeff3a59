"""Neighborhood attention (N blocks of DAT++) in pure PyTorch, with NATTEN's semantics.

Each query attends to the k×k pixels around it (dilation 1). Near a border the window is shifted inwards so it
always holds k×k real pixels; the bias of key j for query i is ``rpb[:, (jy − iy) + k − 1, (jx − ix) + k − 1]``.
Maps smaller than k are zero-padded on the right/bottom *before* ``qkv`` (so the padded tokens take part, as in
NATTEN) and cropped after.

Two implementations: ``reference_forward`` gathers each query's k×k keys explicitly (the definition, memory k²×);
``forward`` cuts the queries into t×t tiles, gives each tile the (t+k−1)² halo of keys that covers all of its
windows, and runs one ``scaled_dot_product_attention`` with the bias and the out-of-window mask as an additive mask;
maps up to 2t on a side are one tile (the whole map), which needs no halo copies at all. A graph exported with a
symbolic H×W takes t×t tiles with a (t+k−1)² halo at every size (``_neighborhood_attention_tiles_symbolic``).
"""

from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from torch import nn

from .attention import biased_attention
from .ops import dense
from .shapes import ceil_div, symbolic_sizes
from .tracing import ExecutionMode, execution_mode


def window_starts(length: int, kernel_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """First key index of every query's window along one axis: clamp(i − k//2, 0, L − k)."""
    i = torch.arange(length, device=device)
    return (i - kernel_size // 2).clamp(0, length - kernel_size)


def neighborhood_attention_gather(q, k, v, rpb, kernel_size: int, attn_drop: nn.Module | None = None) -> torch.Tensor:
    """Reference NA. ``q, k, v``: B×heads×H×W×c (q already scaled); ``rpb``: heads×(2k−1)×(2k−1).

    Returns B×heads×H×W×c.
    """
    B, heads, H, W, c = q.shape
    ks = kernel_size
    ar = torch.arange(ks, device=q.device)
    rows = window_starts(H, ks, q.device)[:, None] + ar  # H×k key rows of each query row
    cols = window_starts(W, ks, q.device)[:, None] + ar  # W×k
    k_n = k[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # B×h×H×W×k×k×c
    v_n = v[:, :, rows[:, None, :, None], cols[None, :, None, :]]
    attn = torch.einsum("bhijc,bhijxyc->bhijxy", q, k_n)
    dy = rows - torch.arange(H, device=q.device)[:, None] + ks - 1  # H×k
    dx = cols - torch.arange(W, device=q.device)[:, None] + ks - 1  # W×k
    bias = rpb[:, dy[:, None, :, None], dx[None, :, None, :]]  # h×H×W×k×k
    attn = attn + bias.unsqueeze(0)
    attn = attn.reshape(B, heads, H, W, ks * ks).softmax(dim=-1).reshape(B, heads, H, W, ks, ks)
    if attn_drop is not None:
        attn = attn_drop(attn)
    return torch.einsum("bhijxy,bhijxyc->bhijc", attn, v_n)


def _tile_halo(length: int, tile: int, kernel_size: int, device: Optional[torch.device]):
    """For tiles of ``tile`` queries along one axis: key rows of each tile's halo, validity and bias index.

    Returns ``keys`` (n_tiles×L_k) key indices, ``inside`` (n_tiles×tile×L_k) whether that key is in the window of
    that query, and ``bias_index`` (n_tiles×tile×L_k) into the (2k−1) bias axis.
    """
    n_tiles = -(-length // tile)
    halo = min(tile + kernel_size - 1, length)
    starts = (torch.arange(n_tiles, device=device) * tile - kernel_size // 2).clamp(0, length - halo)
    keys = starts[:, None] + torch.arange(halo, device=device)  # n×L_k
    queries = (torch.arange(n_tiles, device=device)[:, None] * tile + torch.arange(tile, device=device)).clamp(
        max=length - 1
    )  # n×t (padding → last row)
    first = window_starts(length, kernel_size, device)[queries]  # n×t
    inside = (keys[:, None, :] >= first[:, :, None]) & (keys[:, None, :] < first[:, :, None] + kernel_size)
    bias_index = (keys[:, None, :] - queries[:, :, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return keys, inside, bias_index


@register_notrace_function  # chooses the tiling from the map size (see layers/tracing.py)
def neighborhood_attention_tiled(
    qkv: torch.Tensor, rpb: torch.Tensor, kernel_size: int, tile: int = 7, dropout_p: float = 0.0
) -> torch.Tensor:
    """Fast NA by query tiles and SDPA. ``qkv``: B×H×W×3×heads×c (the projection's output, q not scaled).

    Returns B×H×W×(heads·c). The halos are cut with two ``index_select`` calls (rows, then columns) on the
    k/v part of ``qkv``; the bias and the out-of-window mask form one additive mask shared by the batch.
    """
    B, H, W, _, heads, c = qkv.shape
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(H, W):
            return _neighborhood_attention_tiles_symbolic(qkv, rpb, kernel_size, tile, dropout_p)
    if H <= 2 * tile and W <= 2 * tile:
        # Small map: one tile holding the whole map. q, k, v are strided views of qkv (no halo copies); the
        # mask keeps each query's k×k window.
        q, k, v = qkv.view(B, H * W, 3, heads, c).permute(2, 0, 3, 1, 4).unbind(0)  # B×heads×HW×c views
        rows, in_y, by = _tile_halo(H, H, kernel_size, qkv.device)
        cols, in_x, bx = _tile_halo(W, W, kernel_size, qkv.device)
        bias = rpb[:, by[0][:, None, :, None], bx[0][None, :, None, :]]  # heads×H×W×H×W
        inside = in_y[0][:, None, :, None] & in_x[0][None, :, None, :]
        mask = bias.masked_fill(~inside, float("-inf")).reshape(1, heads, H * W, H * W)
        out = biased_attention(q, k, v, mask.to(q.dtype), dropout_p)
        return out.transpose(1, 2).reshape(B, H, W, heads * c)
    ty, tx = min(tile, H), min(tile, W)
    rows, in_y, by = _tile_halo(H, ty, kernel_size, qkv.device)
    cols, in_x, bx = _tile_halo(W, tx, kernel_size, qkv.device)
    nty, lky = rows.shape
    ntx, lkx = cols.shape
    n_tiles = heads * nty * ntx

    # heads-major copy of q, k, v (one pass), then one index_select per tensor straight into the tile layout
    qkv = qkv.view(B, H * W, 3, heads, c).permute(2, 0, 3, 1, 4).contiguous()  # 3×B×heads×HW×c
    halo = (rows[:, None, :, None] * W + cols[None, :, None, :]).flatten()  # nty×ntx×lky×lkx
    q_rows = (torch.arange(nty * ty, device=qkv.device).clamp(max=H - 1)).view(nty, ty)
    q_cols = (torch.arange(ntx * tx, device=qkv.device).clamp(max=W - 1)).view(ntx, tx)
    tiles = (q_rows[:, None, :, None] * W + q_cols[None, :, None, :]).flatten()  # nty×ntx×ty×tx (padding → edge)
    q = qkv[0].index_select(2, tiles).view(B, n_tiles, ty * tx, c)
    k, v = qkv[1:].index_select(3, halo).view(2, B, n_tiles, lky * lkx, c).unbind(0)
    # heads × nty × ty × lky × ntx × tx × lkx → heads × nty × ntx × (ty·tx) × (lky·lkx)
    bias = rpb[:, by[:, :, :, None, None, None], bx[None, None, None, :, :, :]]
    inside = in_y[:, :, :, None, None, None] & in_x[None, None, None, :, :, :]
    mask = bias.masked_fill(~inside, float("-inf"))
    mask = mask.permute(0, 1, 4, 2, 5, 3, 6).reshape(1, n_tiles, ty * tx, lky * lkx)
    out = biased_attention(q, k, v, mask.to(q.dtype), dropout_p)
    out = out.view(B, heads, nty, ntx, ty, tx, c).permute(0, 2, 4, 3, 5, 1, 6).reshape(B, nty * ty, ntx * tx, heads * c)
    return out[:, :H, :W]


@torch.jit.unused
def _tile_halo_symbolic(length: int, tile: int, kernel_size: int, device: Optional[torch.device]):
    """``_tile_halo`` for a symbolic ``length`` L (the real map; the map itself is padded by k − 1, see
    ``_pad_to_kernel_symbolic``): every tile gets a halo of t + k − 1 keys, starting at the window of its first
    query. Windows start at clamp(i − k//2, 0, max(L, k) − k), max(L, k) being the map NATTEN pads to; keys past
    the padded map's end are clamped for the gather and lie in no window, so the mask drops them."""
    n_tiles = ceil_div(length, tile)
    halo = tile + kernel_size - 1
    tiles = torch.arange(n_tiles, device=device)
    queries = (tiles[:, None] * tile + torch.arange(tile, device=device)).clamp(max=length - 1)  # n×t
    last_start = torch.full((), length - kernel_size, device=device).clamp(min=0)  # max(L, k) − k, in the graph
    first = torch.minimum((queries - kernel_size // 2).clamp(min=0), last_start)  # n×t
    keys = first[:, :1] + torch.arange(halo, device=device)  # n×L_k
    inside = (keys[:, None, :] >= first[:, :, None]) & (keys[:, None, :] < first[:, :, None] + kernel_size)
    bias_index = (keys[:, None, :] - queries[:, :, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return keys.clamp(max=length + kernel_size - 2), inside, bias_index


@torch.jit.unused
def _neighborhood_attention_tiles_symbolic(
    qkv: torch.Tensor, rpb: torch.Tensor, kernel_size: int, tile: int, dropout_p: float
) -> torch.Tensor:
    """``neighborhood_attention_tiled`` for symbolic sizes (a dynamic-size export): one formulation for every size.

    ``qkv`` is the projection of the map padded by exactly k − 1 (``_pad_to_kernel_symbolic``), so the real size
    is known without a ``max``; returns B×H×W×(heads·c) for the real H×W. t×t query tiles with (t+k−1)² halos
    (queries past the map's end repeat its last row or column and are dropped by the final gather), where the
    eager path picks the whole map as one tile up to 2t and tiles of min(t, H)×min(t, W) above. Same result to
    float rounding (the masked keys add exact zeros; the sums run in another order). Copies are ``clone``s and
    crops gathers: a ``contiguous()``, a reshape of a permuted tensor or a slice would make the export guard on
    sizes (whether a dimension is 1, whether a slice is shorter than the tensor)."""
    B, Hp, Wp, _, heads, c = qkv.shape
    H, W = Hp - (kernel_size - 1), Wp - (kernel_size - 1)
    t, device = tile, qkv.device
    rows, in_y, by = _tile_halo_symbolic(H, t, kernel_size, device)
    cols, in_x, bx = _tile_halo_symbolic(W, t, kernel_size, device)
    nty, ntx, lk = ceil_div(H, t), ceil_div(W, t), t + kernel_size - 1
    n_tiles = heads * nty * ntx

    qkv = qkv.view(B, Hp * Wp, 3, heads, c).permute(2, 0, 3, 1, 4).clone(memory_format=torch.contiguous_format)
    halo = (rows[:, None, :, None] * Wp + cols[None, :, None, :]).reshape(-1)  # nty×ntx×lk×lk
    q_rows = torch.arange(nty * t, device=device).clamp(max=H - 1).view(nty, t)
    q_cols = torch.arange(ntx * t, device=device).clamp(max=W - 1).view(ntx, t)
    tiles = (q_rows[:, None, :, None] * Wp + q_cols[None, :, None, :]).reshape(-1)  # nty×ntx×t×t
    q = qkv[0].index_select(2, tiles).view(B, n_tiles, t * t, c)
    k, v = qkv[1:].index_select(3, halo).view(2, B, n_tiles, lk * lk, c).unbind(0)
    # the bias and the mask read together from the flattened table in their final heads × tiles × queries × keys
    # order (one Gather along the table's rows: no transpose of a heads-innermost copy; ONNX Runtime: 2.2× faster
    # than advanced indexing + permute for datpp_tiny at batch 1). The table gets a last row and column of −inf,
    # and a key outside its query's window (a separable condition: its row or its column) points there, so the
    # small row and column indices carry the mask and no full-size select runs (ONNX Runtime: the N blocks' `Where`,
    # 3% of datpp_tiny at batch 1, is gone)
    side = rpb.shape[-1] + 1
    table = F.pad(rpb, (0, 1, 0, 1), value=float("-inf")).reshape(heads, side * side)
    by = torch.where(in_y, by, side - 1)
    bx = torch.where(in_x, bx, side - 1)
    index = by[:, None, :, None, :, None] * side + bx[None, :, None, :, None, :]  # nty×ntx×t×t×lk×lk
    mask = table.index_select(1, index.reshape(-1)).view(heads, nty, ntx, t, t, lk, lk)
    # expanded over the batch here: SDPA broadcasting a mask of batch 1 guards on the batch being 1
    mask = mask.view(1, n_tiles, t * t, lk * lk).expand(B, -1, -1, -1)
    out = biased_attention(q, k, v, mask.to(q.dtype), dropout_p)  # B×(heads·nty·ntx)×t²×c
    out = out.view(B, heads, nty, ntx, t, t, c).permute(0, 2, 4, 3, 5, 1, 6)
    out = out.clone(memory_format=torch.contiguous_format).view(B, nty * t * ntx * t, heads * c)
    real = (torch.arange(H, device=device)[:, None] * (ntx * t) + torch.arange(W, device=device)[None, :]).reshape(-1)
    return out.index_select(1, real).view(B, H, W, heads * c)


_BLOCK_MASKS: dict = {}
_COMPILED_FLEX = None


def _flex_attention():
    """``flex_attention`` compiled once (it is only fast compiled), or None where this torch lacks it."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError:
            return None
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def neighborhood_attention_flex(qkv: torch.Tensor, rpb: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """NA with ``flex_attention``: a block mask of the clamped k×k windows (blocks without any neighbour are
    skipped) and a score_mod adding the relative position bias. ``qkv``: B×H×W×3×heads×c → B×H×W×(heads·c)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, H, W, _, heads, c = qkv.shape
    ks, r = kernel_size, kernel_size // 2
    q, k, v = qkv.view(B, H * W, 3, heads, c).permute(2, 0, 3, 1, 4).unbind(0)

    def in_window(b, h, q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        sy = (qy - r).clamp(0, H - ks)
        sx = (qx - r).clamp(0, W - ks)
        return (ky >= sy) & (ky < sy + ks) & (kx >= sx) & (kx < sx + ks)

    def add_bias(score, b, h, q_idx, kv_idx):
        dy = (kv_idx // W - q_idx // W + ks - 1).clamp(0, 2 * ks - 2)
        dx = (kv_idx % W - q_idx % W + ks - 1).clamp(0, 2 * ks - 2)
        return score + rpb[h, dy, dx]

    key = (H, W, ks, str(qkv.device))
    if key not in _BLOCK_MASKS:
        _BLOCK_MASKS[key] = create_block_mask(in_window, None, None, H * W, H * W, device=qkv.device)
    out = _flex_attention()(q, k, v, score_mod=add_bias, block_mask=_BLOCK_MASKS[key])
    return out.transpose(1, 2).reshape(B, H, W, heads * c)


@register_notrace_function  # branches on the map size (see layers/tracing.py)
def pad_to_kernel(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pad a B×H×W×C map on the right/bottom to at least k×k (NATTEN pads maps smaller than the kernel).
    With symbolic sizes always by k − 1 (``_pad_to_kernel_symbolic``)."""
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(x.shape[1], x.shape[2]):
            return _pad_to_kernel_symbolic(x, kernel_size)
    pad_b, pad_r = max(0, kernel_size - x.shape[1]), max(0, kernel_size - x.shape[2])
    if pad_b > 0 or pad_r > 0:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


@torch.jit.unused
def _pad_to_kernel_symbolic(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``pad_to_kernel`` for symbolic sizes: k − 1 zero rows and columns at every size (a pad of max(0, k − H)
    would give sizes that are a ``max``, on which every later shape decision guards). The N block's symbolic path
    masks the keys that NATTEN's padding to k would not add (``_tile_halo_symbolic``)."""
    return F.pad(x, (0, 0, 0, kernel_size - 1, 0, kernel_size - 1))


@torch.jit.unused
def _flex_chosen(x: torch.Tensor, use_flex: Optional[bool]) -> bool:
    """Whether the N block runs ``flex_attention`` on ``x``: eager, and under torch.jit.trace, which records what
    eager runs; graphs traced by dynamo keep the tiled path. ``use_flex``: None picks it on CUDA."""
    mode = execution_mode(x)
    if not (mode.is_eager or mode is ExecutionMode.JIT_TRACING):
        return False
    if use_flex is None:
        return x.is_cuda and _flex_attention() is not None
    # flex_attention has no backward on CPU: there it can only serve inference
    return use_flex and (x.is_cuda or not torch.is_grad_enabled()) and _flex_attention() is not None


@register_notrace_function  # a fast-path switch: a leaf of fx graphs, which run what eager runs (see layers/tracing.py)
def neighborhood_attention(
    qkv: torch.Tensor, rpb: torch.Tensor, kernel_size: int, tile: int, dropout_p: float, use_flex: Optional[bool]
) -> torch.Tensor:
    """NA of ``qkv`` (B×H×W×3×heads×c) → B×H×W×(heads·c): ``flex_attention`` where :func:`_flex_chosen` picks it
    (and no dropout), else the tiled SDPA path."""
    if not torch.jit.is_scripting():  # folded by TorchScript: flex_attention is a dynamo-compiled function
        if dropout_p == 0.0 and _flex_chosen(qkv, use_flex):
            return neighborhood_attention_flex(qkv, rpb, kernel_size)
    return neighborhood_attention_tiled(qkv, rpb, kernel_size, tile, dropout_p)


torch.fx.wrap("neighborhood_attention")
torch.fx.wrap("neighborhood_attention_tiled")
torch.fx.wrap("pad_to_kernel")
torch.fx.wrap("dense")


class NeighborhoodAttention2D(nn.Module):
    """k×k neighborhood self-attention with relative position bias. Keys ``qkv``, ``proj``, ``rpb`` (NATTEN's)."""

    def __init__(
        self, dim: int, kernel_size: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, tile_size: int = 7
    ):
        super().__init__()
        if kernel_size < 2 or kernel_size % 2 == 0:
            raise ValueError(f"neighborhood kernel must be odd and > 1, got {kernel_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.kernel_size = heads, dim // heads, kernel_size
        self.scale = self.head_dim**-0.5
        self.tile_size = tile_size
        # flex_attention on CUDA in eager mode (None = auto); the tiled SDPA path everywhere else, including
        # inside torch.compile, where it compiles without graph breaks.
        self.use_flex: bool | None = None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpb = nn.Parameter(torch.zeros(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)

    def _qkv(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Pad maps smaller than the kernel (right/bottom) and project: B×H'×W'×3×heads×c."""
        x = pad_to_kernel(x, self.kernel_size)
        B, H, W, C = x.shape
        qkv = dense(x, self.qkv.weight, self.qkv.bias) if fast else self.qkv(x)
        return qkv.view(B, H, W, 3, self.heads, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path. ``x``: B×H×W×C → B×H×W×C."""
        B, H, W, C = x.shape
        qkv = self._qkv(x, fast=True)
        dropout = self.attn_drop.p if self.training else 0.0
        out = neighborhood_attention(qkv, self.rpb, self.kernel_size, self.tile_size, dropout, self.use_flex)
        return self.proj_drop(dense(out[:, :H, :W], self.proj.weight, self.proj.bias))

    @torch.jit.unused
    def _flex_enabled(self, x: torch.Tensor) -> bool:
        return _flex_chosen(x, self.use_flex)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain path on B×C×H×W: explicit k×k neighborhoods, as NATTEN defines them."""
        x = x.permute(0, 2, 3, 1)
        B, H, W, C = x.shape
        q, k, v = self._qkv(x).permute(3, 0, 4, 1, 2, 5).unbind(0)
        out = neighborhood_attention_gather(q * self.scale, k, v, self.rpb, self.kernel_size, self.attn_drop)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, q.shape[2], q.shape[3], C)[:, :H, :W]
        return self.proj_drop(self.proj(out)).permute(0, 3, 1, 2)
