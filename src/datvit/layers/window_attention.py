"""Local (L) and shifted (S) window attention of DAT v1 (Swin-style), for maps of any size.

The authors' code needs H and W to be multiples of the window. Here the map is padded on the right/bottom to the
window, padded keys are masked out, and the shifted-window region mask is computed for the actual (padded) size.
At the configured size nothing is padded and the result is the authors'.
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

# Added to logits of query/key pairs from different regions of a shifted window (the authors' value).
REGION_MASK_VALUE = -100.0
# Added to logits of padded keys. Finite, so a padded query whose whole window is padding stays finite.
PADDING_MASK_VALUE = -1e4


def relative_position_index(window_size: int) -> torch.Tensor:
    """Swin's (w², w²) index into a ((2w−1)², heads) table: (Δy + w − 1)·(2w − 1) + (Δx + w − 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def _per_window(t_y: torch.Tensor, t_x: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A row function ``t_y`` (H) and a column function ``t_x`` (W) of a map (multiples of ``w``) as views that
    broadcast to (rows of windows)×(columns of windows)×w×w: combined and flattened to (number of windows)×w²,
    window by window. Broadcast straight into that order: a transpose of the H×W map would make a symbolic-size
    export guard on there being more than one window."""
    return t_y.view(-1, w)[:, None, :, None], t_x.view(-1, w)[None, :, None, :]


def _mod(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t % n`` of an integer tensor by a size; by a 0-d tensor when the size is symbolic (a dynamic-size export:
    ONNX's exporter cannot write a remainder by a symbolic scalar)."""
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(n, n):
            return torch.remainder(t, torch.full((), n, dtype=t.dtype, device=t.device))
    return t % n


def window_attention_mask(
    height: int,
    width: int,
    window_size: int,
    shift_size: int,
    pad_bottom: int = 0,
    pad_right: int = 0,
    device: Optional[torch.device] = None,
    region_value: float = REGION_MASK_VALUE,
    padding_value: float = PADDING_MASK_VALUE,
) -> Optional[torch.Tensor]:
    """Additive mask (num_windows, w², w²) for a padded map of ``height``×``width`` (multiples of the window).

    Pairs from different shifted regions get ``REGION_MASK_VALUE`` (regions as in Swin / the authors, computed on
    the rolled padded map); padded keys get ``PADDING_MASK_VALUE``. Returns None when nothing is masked; with
    symbolic sizes (a dynamic-size export, ``layers/shapes.py``) always the mask, zero where nothing is masked.
    """
    if shift_size == 0 and not symbolic_sizes(pad_bottom, pad_right) and pad_bottom == 0 and pad_right == 0:
        return None
    w, s = window_size, shift_size
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    if s > 0:
        region_y = (ys >= height - w).long() + (ys >= height - s).long()
        region_x = (xs >= width - w).long() + (xs >= width - s).long()
    else:
        region_y, region_x = torch.zeros_like(ys), torch.zeros_like(xs)
    ry, rx = _per_window(region_y, region_x, w)
    region = (ry * 3 + rx).reshape(-1, w * w)
    # After rolling by −s, position y holds padded-map row (y + s) mod height.
    py, px = _per_window(_mod(ys + s, height) >= height - pad_bottom, _mod(xs + s, width) >= width - pad_right, w)
    padded = (py | px).reshape(-1, w * w)
    mask = torch.zeros(region.shape[0], w * w, w * w, device=device)
    mask = mask.masked_fill(region[:, :, None] != region[:, None, :], region_value)
    mask = mask + padded[:, None, :].float() * padding_value
    return mask


@register_notrace_function  # sizes are Proxies under torch.fx (see layers/tracing.py)
def window_token_index(
    height: int, width: int, window_size: int, shift_size: int, device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token orders for window attention on an H×W map (row-major tokens).

    ``gather`` lists, window by window, the token at every slot of the map padded to the window and rolled by
    −shift (padding slots point at a real token: they are masked as keys and dropped as queries); ``scatter``
    gives, for every real token, its slot. So ``tokens[gather]`` partitions and ``windows[scatter]`` merges.
    """
    w, s = window_size, shift_size
    nwy, nwx = ceil_div(height, w), ceil_div(width, w)  # windows per column and row (padded map: multiples)
    hp, wp = nwy * w, nwx * w
    ys = _mod(torch.arange(hp, device=device) + s, hp)  # padded-map row shown at each rolled row
    xs = _mod(torch.arange(wp, device=device) + s, wp)
    # window by window: the rows of window row i are ys[i·w + (0…w−1)], its columns xs[j·w + (0…w−1)]; built in
    # that order directly (a transpose of the row-major map would make a symbolic-size export guard on nwx > 1)
    rows = ys.clamp(max=height - 1).view(nwy, w)
    cols = xs.clamp(max=width - 1).view(nwx, w)
    gather = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1)
    ry = _mod(torch.arange(height, device=device) + (hp - s), hp)  # rolled row of each real row (operands kept
    rx = _mod(torch.arange(width, device=device) + (wp - s), wp)  # ≥ 0: inductor cannot bound a modulo of negatives)
    scatter = ((ry // w)[:, None] * nwx + (rx // w)[None, :]) * (w * w) + (ry % w)[:, None] * w + (rx % w)[None, :]
    return gather, scatter.reshape(-1)


@register_notrace_function  # branches on the map size (see layers/tracing.py)
def window_layout(
    height: int,
    width: int,
    window_size: int,
    shift_size: int,
    cached_size: int,
    cached_gather: torch.Tensor,
    cached_scatter: torch.Tensor,
    cached_mask: Optional[torch.Tensor],
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``window_token_index`` and the region/padding mask of window attention on an H×W map: the ``cached_*``
    tensors when the map is ``cached_size`` square (built once with the module), else computed for this size.

    The cache matters under torch.compile: computed in the graph, the mask and the token orders are not constants
    that freezing can fold, so inductor fuses their integer arithmetic (remainders, comparisons) into the
    consumers, and dat_tiny's shifted-window softmax takes 3.6× the time of the unshifted one.

    With symbolic sizes (a dynamic-size export, ``layers/shapes.py``) everything is computed in the graph, and the
    mask is never None."""
    if not symbolic_sizes(height, width) and height == cached_size and width == cached_size:
        return cached_gather, cached_scatter, cached_mask
    gather, scatter = window_token_index(height, width, window_size, shift_size, device)
    hp, wp = ceil_div(height, window_size) * window_size, ceil_div(width, window_size) * window_size
    mask = window_attention_mask(hp, wp, window_size, shift_size, hp - height, wp - width, device=device)
    return gather, scatter, mask


@register_notrace_function  # branches on whether there is a mask (see layers/tracing.py)
def windowed_attention_bias(bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The additive mask of window attention: the relative position ``bias`` (heads×w²×w²) alone
    (1×heads×w²×w²) when no window is padded or shifted (``mask`` None), else plus the region/padding ``mask`` of
    every window (nW×w²×w², from :func:`window_layout`): nW×heads×w²×w², which ``biased_attention`` repeats over
    the batch (windows-minor)."""
    bias = bias.unsqueeze(0)
    if mask is not None:
        bias = bias + mask.to(bias.dtype).unsqueeze(1)
    return bias


torch.fx.wrap("window_token_index")
torch.fx.wrap("window_layout")
torch.fx.wrap("windowed_attention_bias")
torch.fx.wrap("biased_attention")
torch.fx.wrap("dense")


class LocalAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping w×w windows with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window_size: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fmap_size: Optional[int] = None,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.window_size = dim, heads, int(window_size)
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.shift_size = 0
        self.proj_qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * self.window_size - 1) ** 2, heads))
        trunc_normal_(self.relative_position_bias_table, std=0.01)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.fmap_size = int(fmap_size) if fmap_size else 0
        self._cache_layout()

    def _cache_layout(self) -> None:
        """Token orders and mask for a ``fmap_size`` square map (the configured size), as non-persistent buffers
        (not in the state_dict; they move with the module): constants for torch.compile's freezing."""
        gather = scatter = torch.zeros(0, dtype=torch.long)
        mask: Optional[torch.Tensor] = None
        if self.fmap_size:
            size = self.fmap_size
            gather, scatter, mask = window_layout(
                size, size, self.window_size, self.shift_size, 0, gather, scatter, None
            )
        self.register_buffer("layout_gather", gather, persistent=False)
        self.register_buffer("layout_scatter", scatter, persistent=False)
        self.register_buffer("layout_mask", mask, persistent=False)

    def init_buffers(self) -> None:
        """Recompute every buffer that follows from the window, shift and map size (the position index, the
        cached layout and, in S blocks, ``attn_mask``) on the table's device and in its dtype: after a change of
        geometry (``DAT.set_input_size``) and after materialising a model built on the meta device."""
        table = self.relative_position_bias_table
        with torch.device(table.device):
            self.register_buffer("relative_position_index", relative_position_index(self.window_size))
            self._cache_layout()
        if self.layout_mask is not None:
            self.layout_mask = self.layout_mask.to(table.dtype)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, w², w²) bias looked up from the table, contiguous in that order.

        Contiguous matters for torch.compile with freezing: the bias is folded into a constant in the layout it
        has, and a heads-last (w², w², heads) constant makes inductor's mask kernel transpose 3-wide tiles: without
        this copy (a few kB) the compiled shifted block runs at 0.79× eager."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, self.heads)
        return bias.permute(2, 0, 1).contiguous()

    def _padding(self, height: int, width: int) -> tuple[int, int]:
        return (-height) % self.window_size, (-width) % self.window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path. ``x``: B×H×W×C → B×H×W×C.

        Padding, the cyclic shift and the window partition are one ``index_select`` of the tokens (and one back),
        q/k/v go to ``scaled_dot_product_attention`` as strided views, the bias and masks as an additive mask.
        """
        B, H, W, C = x.shape
        w, heads = self.window_size, self.heads
        num_windows, n = ceil_div(H, w) * ceil_div(W, w), w * w
        gather, scatter, mask = window_layout(
            H,
            W,
            w,
            self.shift_size,
            self.fmap_size,
            self.layout_gather,
            self.layout_scatter,
            self.layout_mask,
            x.device,
        )
        windows = x.reshape(B, H * W, C).index_select(1, gather)  # B×(nW·w²)×C
        qkv = dense(windows, self.proj_qkv.weight, self.proj_qkv.bias).view(B * num_windows, n, 3, heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B·nW)×heads×w²×c views

        bias = windowed_attention_bias(self.relative_position_bias(), mask)
        if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
            if symbolic_sizes(H, W):
                # one bias per (image, window), so that biased_attention need not ask whether there is one window
                bias = bias.repeat(B, 1, 1, 1)
        out = biased_attention(q, k, v, bias.to(q.dtype), self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, num_windows * n, C).index_select(1, scatter)
        return self.proj_drop(dense(out, self.proj_out.weight, self.proj_out.bias)).view(B, H, W, C)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' algorithm step by step on B×C×H×W (plus padding and its mask)."""
        B, C, H, W = x.shape
        w, s = self.window_size, self.shift_size
        pad_b, pad_r = self._padding(H, W)
        x = F.pad(x, (0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(2, 3))
        mask = window_attention_mask(Hp, Wp, w, s, pad_b, pad_r, device=x.device)
        r1, r2 = Hp // w, Wp // w
        # b c (r1 h1) (r2 w1) -> (b r1 r2) (h1 w1) c
        tokens = x.reshape(B, C, r1, w, r2, w).permute(0, 2, 4, 3, 5, 1).reshape(B * r1 * r2, w * w, C)
        q, k, v = torch.chunk(self.proj_qkv(tokens), 3, dim=2)
        q = q * self.scale
        q, k, v = [t.reshape(t.shape[0], w * w, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v)]
        attn = torch.einsum("bhmc,bhnc->bhmn", q, k)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw_, ww, _ = mask.shape
            attn = attn.reshape(B, nw_, self.heads, ww, ww) + mask.reshape(1, nw_, 1, ww, ww)
            attn = attn.reshape(B * nw_, self.heads, ww, ww)
        attn = self.attn_drop(attn.softmax(dim=3))
        out = torch.einsum("bhmn,bhnc->bhmc", attn, v)
        out = out.transpose(1, 2).reshape(-1, w * w, C)
        out = self.proj_drop(self.proj_out(out))
        out = out.reshape(B, r1, r2, w, w, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, Hp, Wp)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(2, 3))
        return out[:, :, :H, :W]


class ShiftWindowAttention(LocalAttention):
    """Window attention on the map rolled by −shift (⌈w/2⌉ in DAT v1, not Swin's ⌊w/2⌋) with the region mask.

    ``attn_mask`` is kept as a buffer built for ``fmap_size`` because the authors' checkpoints contain it; the
    forward computes the mask for the actual input size instead.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window_size: int,
        shift_size: int,
        fmap_size: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, heads, window_size, attn_drop, proj_drop)
        if not 0 < shift_size < self.window_size:
            raise ValueError(f"shift size {shift_size} must be in (0, window {self.window_size})")
        self.shift_size = int(shift_size)
        self.fmap_size = int(fmap_size)
        self._cache_layout()
        pad = (-self.fmap_size) % self.window_size
        size = self.fmap_size + pad
        self.register_buffer("attn_mask", window_attention_mask(size, size, self.window_size, self.shift_size))

    def init_buffers(self) -> None:
        super().init_buffers()
        table = self.relative_position_bias_table
        size = self.fmap_size + (-self.fmap_size) % self.window_size
        mask = window_attention_mask(size, size, self.window_size, self.shift_size, device=table.device)
        self.register_buffer("attn_mask", mask.to(table.dtype))
