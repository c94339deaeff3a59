"""Deformable multi-head attention — the D block of DAT and DAT++.

Queries are projected from every pixel; an offset network (shared by the G channel groups) predicts where each
group samples a small Hk×Wk grid of keys/values from the input by bilinear interpolation; attention gets a
*deformable* relative position bias, read from ``rpe_table`` at the (query − sample) displacement.

``reference_forward`` is the authors' algorithm step by step (einsum, ``grid_sample`` over a B·G × hg × HW × Ns
grid for the bias). ``forward`` is the fast path: channels-last tokens, the bias by one ``grid_sample`` on a grid
built in a single broadcast (the heads of a group share its interpolation weights), and
``scaled_dot_product_attention`` with the bias as an additive mask.
"""

from typing import Literal, Optional, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from torch import nn

from .attention import biased_attention
from .norm import ChannelLayerNorm
from .ops import (
    dense,
    grid_sample_bilinear,
    linear_from_pointwise_conv,
    pointwise,
    position_bias_gather,
    sample_channels_last,
)
from .shapes import conv_input, symbolic_sizes
from .tracing import ExecutionMode, execution_mode, export_sampling

Generation = Literal["v1", "pp"]


def deformable_position_bias(table: torch.Tensor, pos: torch.Tensor, q_grid: torch.Tensor) -> torch.Tensor:
    """Bias B×heads×(H·W)×Ns: ``table`` (heads×Th×Tw) read bilinearly at (q − p)/2 for every query position q
    (``q_grid``, H×W×2) and sampled position p (``pos``, B×G×Ns×2, (y, x), normalised).

    Same ``grid_sample`` call as the authors (align_corners=True, zeros outside; the heads of a group are its
    channels, so they share the interpolation weights), but the (x, y)-ordered grid is built in one broadcast
    instead of a displacement tensor plus a reordering copy. ``grid_sample``'s fused kernel stays: on CPU it is
    1.2–1.7× faster than a direct four-corner gather forward, 2–4× backward. Graphs exported under
    ``export_options(sampling="gather")`` read the table by gathers instead (``ops.position_bias_gather``).
    """
    if not torch.jit.is_scripting():
        if execution_mode(table) is ExecutionMode.EXPORTING and export_sampling() == "gather":
            return position_bias_gather(table, pos, q_grid)
    heads, th, tw = table.shape
    B, G, ns, _ = pos.shape
    H, W, _ = q_grid.shape
    # halved before the broadcast (exact: a power of two), so the grid is written in one pass; the query half is
    # first repeated over the samples (H·W×Ns×2, small), so that pass runs over rows of Ns·2 contiguous values
    # instead of an inner loop of 2 (7× faster at dat_tiny's stage 3)
    # (a clone: contiguous() would test contiguity, which a dynamic-size export has to guard on, Ns = 1)
    q_xy = q_grid.flip(-1).reshape(1, H * W, 1, 2).mul(0.5).expand(1, H * W, ns, 2)
    q_xy = q_xy.clone(memory_format=torch.contiguous_format)
    p_xy = pos.flip(-1).reshape(B * G, 1, ns * 2).mul(0.5)
    grid = torch.sub(q_xy.view(1, H * W, ns * 2), p_xy).view(B * G, H * W, ns, 2)
    tables = table.reshape(G, heads // G, th, tw).repeat(B, 1, 1, 1)  # (B·G)×(heads/G)×Th×Tw
    bias = grid_sample_bilinear(tables, grid)
    return bias.view(B, heads, H * W, ns)


def _reference_axis(n: int, generation: str, dtype: torch.dtype, device: Optional[torch.device]) -> torch.Tensor:
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(n, n):
            return _reference_axis_symbolic(n, generation, dtype, device)
    i = torch.arange(n, dtype=dtype, device=device) + 0.5
    if generation == "v1":
        return i.div(n).mul(2.0).sub(1.0)
    if n == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    return i.div(n - 1.0).mul(2.0).sub(1.0)


@torch.jit.unused
def _reference_axis_symbolic(n: int, generation: str, dtype: torch.dtype, device: Optional[torch.device]):
    """``_reference_axis`` for a symbolic ``n`` (a dynamic-size export): DAT++ divides by max(n − 1, 1), which at
    n = 1 gives (0 + 0.5)/1·2 − 1 = 0, the axis of the branch. (An integer ``arange`` cast: a floating-point
    ``arange`` of a symbolic length guards on the length being > 1.)"""
    i = torch.arange(n, device=device).to(dtype) + 0.5
    if generation == "v1":
        return i.div(n).mul(2.0).sub(1.0)
    return i.div(torch.sym_max(n - 1, 1)).mul(2.0).sub(1.0)


@register_notrace_function  # branches on the key-grid size (see layers/tracing.py)
def reference_points(
    height: int,
    width: int,
    generation: str,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Uniform grid of pixel centres, normalised to [−1, 1], as (batch, H, W, 2) in (y, x) order.

    v1 divides by the size: ((i + 0.5) / H)·2 − 1. DAT++ divides by size − 1 (the grid is not centred), which is
    undefined for a size of 1: that axis is then 0.
    """
    axes = [_reference_axis(height, generation, dtype, device), _reference_axis(width, generation, dtype, device)]
    ref = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1)
    return ref.unsqueeze(0).expand(batch, -1, -1, -1)


def _query_axis(n: int, dtype: torch.dtype, device: Optional[torch.device]) -> torch.Tensor:
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(n, n):
            return _query_axis_symbolic(n, dtype, device)
    if n == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    return torch.arange(n, dtype=dtype, device=device).div(n - 1.0).mul(2.0).sub(1.0)


@torch.jit.unused
def _query_axis_symbolic(n: int, dtype: torch.dtype, device: Optional[torch.device]) -> torch.Tensor:
    """``_query_axis`` for a symbolic ``n``: i / max(n − 1, 1)·2 − min(n − 1, 1), which is 0 at n = 1."""
    i = torch.arange(n, device=device).to(dtype)
    return i.div(torch.sym_max(n - 1, 1)).mul(2.0).sub(torch.sym_min(n - 1, 1))


@register_notrace_function  # branches on the map size (see layers/tracing.py)
def query_grid(
    height: int, width: int, generation: str, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Normalised positions of the queries (H, W, 2) used for the position bias.

    v1 uses its reference-point formula on the query map; DAT++ uses i / (H − 1)·2 − 1 (0 where H is 1).
    """
    if generation == "v1":
        return reference_points(height, width, "v1", dtype=dtype, device=device)[0]

    axes = [_query_axis(height, dtype, device), _query_axis(width, dtype, device)]
    return torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1)


@register_notrace_function  # branches on the key-grid size (see layers/tracing.py)
def offset_range(hk: int, wk: int, generation: str, like: torch.Tensor) -> torch.Tensor:
    """(y, x) scale of tanh(offset): 1/size (v1) or 1/max(size − 1, 1) (DAT++), as a tensor like ``like``."""
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if symbolic_sizes(hk, wk):
            return _offset_range_symbolic(hk, wk, generation, like)
    if generation == "v1":
        return torch.tensor([1.0 / hk, 1.0 / wk], dtype=like.dtype, device=like.device)
    return torch.tensor([1.0 / max(hk - 1.0, 1.0), 1.0 / max(wk - 1.0, 1.0)], dtype=like.dtype, device=like.device)


@torch.jit.unused
def _offset_range_symbolic(hk: int, wk: int, generation: str, like: torch.Tensor) -> torch.Tensor:
    """``offset_range`` for symbolic sizes: the divisors as a tensor computed in the graph (``torch.tensor`` of
    Python floats would fix the sizes), 1 / that in ``like``'s dtype."""
    if generation == "v1":
        dy, dx = hk, wk
    else:
        dy, dx = torch.sym_max(hk - 1, 1), torch.sym_max(wk - 1, 1)
    sizes = torch.stack([like.new_full((), dy, dtype=torch.float64), like.new_full((), dx, dtype=torch.float64)])
    return sizes.reciprocal().to(like.dtype)


@register_notrace_function  # branches on a dtype (see layers/tracing.py)
def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sampling positions for features of ``dtype``: float32 for bf16/fp16, else ``dtype``."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


torch.fx.wrap("geometry_dtype")
torch.fx.wrap("reference_points")
torch.fx.wrap("query_grid")
torch.fx.wrap("offset_range")
torch.fx.wrap("biased_attention")
torch.fx.wrap("dense")
torch.fx.wrap("pointwise")
torch.fx.wrap("sample_channels_last")
torch.fx.wrap("grid_sample_bilinear")


class DeformableAttention(nn.Module):
    """Deformable multi-head attention (``DAttentionBaseline`` in the authors' code; same parameter names).

    Args:
        dim: channels C. heads: attention heads. groups: offset groups G (heads and C divisible by G).
        fmap_size: map size at the configured image size; sets the ``rpe_table`` size (2H₀−1)².
        stride: offset-network stride; the key grid is about (H/stride)×(W/stride).
        ksize: offset-network depthwise kernel.
        offset_range_factor: > 0 — offsets are tanh(Δ)·factor/size (v1: /Hk, DAT++: /(Hk−1));
            < 0 — no scaling, positions squashed by tanh (v1) or clamped to [−1, 1] (DAT++).
        use_pe: deformable relative position bias. dwc_pe: depthwise-conv position encoding instead.
        no_off: no offsets (keys from average pooling).
        generation: "v1" or "pp": whose geometric conventions to follow (reference points, offset range).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        groups: int,
        fmap_size: int,
        stride: int = 1,
        ksize: int = 3,
        offset_range_factor: float = 2.0,
        use_pe: bool = True,
        generation: Generation = "v1",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        no_off: bool = False,
        dwc_pe: bool = False,
    ):
        super().__init__()
        if generation not in ("v1", "pp"):
            raise ValueError(f"generation must be 'v1' or 'pp', got {generation!r}")
        for name, n in (("dim", dim), ("heads", heads)):
            if n % groups:
                raise ValueError(f"{name} {n} is not divisible by the number of offset groups {groups}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.groups = dim, heads, groups
        self.head_dim = dim // heads
        self.group_dim = dim // groups
        self.group_heads = heads // groups
        self.scale = self.head_dim**-0.5
        self.fmap_size, self.stride, self.ksize = fmap_size, stride, ksize
        self.offset_range_factor = offset_range_factor
        self.generation = generation
        self.use_pe, self.dwc_pe, self.no_off = use_pe, dwc_pe, no_off

        pad = ksize // 2 if (generation == "v1" or ksize != stride) else 0
        self.offset_conv_padding = pad  # TorchScript cannot read a Conv2d's stride/padding
        cg = self.group_dim
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, ksize, stride, pad, groups=cg),
            ChannelLayerNorm(cg),
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, 1, 0, bias=False),
        )
        if no_off:
            for p in self.conv_offset.parameters():
                p.requires_grad_(False)
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.proj_k = nn.Conv2d(dim, dim, 1)
        self.proj_v = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_pe and not no_off:
            if dwc_pe:
                self.rpe_table = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            else:
                self.rpe_table = nn.Parameter(torch.zeros(heads, 2 * fmap_size - 1, 2 * fmap_size - 1))
                trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None
        # Visualisation (datvit.tools.collect_deformable_attention): when set, the fast path computes the softmax
        # explicitly and keeps it in ``captured_attention``; otherwise it never materialises the weights (SDPA).
        self.capture_attention = False
        self.captured_attention: Optional[torch.Tensor] = None

    # -- geometry shared by both paths -------------------------------------------------------------------------

    def _positions(self, offset: torch.Tensor):
        """``offset``: (B·G)×Hk×Wk×2 raw offset-network output (y, x). Returns sampled positions and references."""
        BG, hk, wk, _ = offset.shape
        if self.offset_range_factor >= 0 and not self.no_off:
            rng = offset_range(hk, wk, self.generation, offset)
            offset = offset.tanh().mul(rng).mul(self.offset_range_factor)
        reference = reference_points(hk, wk, self.generation, BG, offset.dtype, offset.device)
        if self.no_off:
            offset = torch.zeros_like(offset)
        if self.offset_range_factor >= 0:
            pos = offset + reference
        elif self.generation == "v1":
            pos = (offset + reference).tanh()
        else:
            pos = (offset + reference).clamp(-1.0, 1.0)
        return pos, reference

    # -- fast path -----------------------------------------------------------------------------------------------

    def _offsets_channels_last(self, q: torch.Tensor) -> torch.Tensor:
        """Offset network on channels-last q (B×H×W×C) for all groups at once → (B·G)×Hk×Wk×2.

        The groups share one depthwise filter bank, so it is tiled G times and run as a single C-channel
        depthwise conv; LayerNorm and the final 1×1 conv then act on each group's Cg channels.
        """
        B = q.shape[0]
        dw, pw = self.conv_offset[0], self.conv_offset[3]
        weight = dw.weight.repeat(self.groups, 1, 1, 1)
        dw_bias = dw.bias
        bias = dw_bias.repeat(self.groups) if dw_bias is not None else None
        h = F.conv2d(conv_input(q), weight, bias, self.stride, self.offset_conv_padding, groups=self.dim)
        hk, wk = h.shape[-2:]
        if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
            if symbolic_sizes(hk, wk):
                return self._offsets_tail_symbolic(h)
        h = h.permute(0, 2, 3, 1).reshape(B, hk, wk, self.groups, self.group_dim)
        h = F.gelu(self.conv_offset[1](h))  # the LayerNorm
        off = F.linear(h, pw.weight.flatten(1))  # B×Hk×Wk×G×2
        return off.permute(0, 3, 1, 2, 4).reshape(B * self.groups, hk, wk, 2)

    @torch.jit.unused
    def _offsets_tail_symbolic(self, h: torch.Tensor) -> torch.Tensor:
        """The offset network after its depthwise conv, for symbolic sizes (a dynamic-size export): ``h``
        (contiguous B×C×Hk×Wk, ``shapes.conv_input``) is split into groups by a view and permuted, so that no
        reshape has to decide from the strides of a possibly 1-pixel map whether it can be a view (each such
        decision is a guard that would narrow the exported size range)."""
        B, _, hk, wk = h.shape
        h = h.view(B, self.groups, self.group_dim, hk, wk).permute(0, 1, 3, 4, 2)  # B×G×Hk×Wk×Cg
        h = F.gelu(self.conv_offset[1](h))  # the LayerNorm
        off = F.linear(h, self.conv_offset[3].weight.flatten(1))  # B×G×Hk×Wk×2, contiguous
        return off.reshape(B * self.groups, hk, wk, 2)

    def forward(
        self, x: torch.Tensor, return_positions: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Fast path. ``x``: B×H×W×C (normalised). Returns B×H×W×C, and with ``return_positions`` also the
        sampled positions and reference points, each B×G×Hk×Wk×2 (y, x) in [−1, 1]."""
        B, H, W, C = x.shape
        G, heads = self.groups, self.heads
        if isinstance(self.proj_q, nn.Linear):  # after use_linear_projections() (deployment)
            q = self.proj_q(x)
        else:
            q = pointwise(x, self.proj_q.weight, self.proj_q.bias)
        if self.no_off:
            offset = x.new_zeros(B * G, H // self.stride, W // self.stride, 2)
        else:
            offset = self._offsets_channels_last(q)
        # the sampling geometry stays in float32 under bf16/fp16 (autocast or a half model): a bf16 position in
        # [-1, 1] is only good to ~1/256, a tenth of a pixel of the 27-wide position-bias table
        offset = offset.to(geometry_dtype(offset.dtype))
        pos, reference = self._positions(offset)
        _, hk, wk, _ = pos.shape
        ns = hk * wk

        if self.no_off:
            sampled = F.avg_pool2d(conv_input(x), kernel_size=self.stride, stride=self.stride)
            sampled = sampled.reshape(B, C, ns).transpose(1, 2).clone(memory_format=torch.contiguous_format)  # B×Ns×C
        else:
            sampled = sample_channels_last(x, pos, G)  # B×Ns×C
        if isinstance(self.proj_k, nn.Linear) and isinstance(self.proj_v, nn.Linear):
            k = self.proj_k(sampled).view(B, ns, heads, self.head_dim).transpose(1, 2)
            v = self.proj_v(sampled).view(B, ns, heads, self.head_dim).transpose(1, 2)
        else:
            # k and v in one GEMM
            kv_weight = torch.cat([self.proj_k.weight.flatten(1), self.proj_v.weight.flatten(1)])
            k_bias, v_bias = self.proj_k.bias, self.proj_v.bias
            assert k_bias is not None and v_bias is not None  # built with bias; says so to TorchScript
            kv_bias = torch.cat([k_bias, v_bias])
            kv = dense(sampled, kv_weight, kv_bias).view(B, ns, 2, heads, self.head_dim)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        qh = q.reshape(B, H * W, heads, self.head_dim).transpose(1, 2)

        bias: Optional[torch.Tensor] = None
        if self.rpe_table is not None and not self.dwc_pe:
            grid = query_grid(H, W, self.generation, pos.dtype, x.device)
            bias = deformable_position_bias(self.rpe_table.to(pos.dtype), pos.reshape(B, G, ns, 2), grid).to(qh.dtype)
        out: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():  # capturing is for eager visualisation; TorchScript skips this branch
            if self.capture_attention:
                out = self._attention_captured(qh, k, v, bias)
        if out is None:
            out = biased_attention(qh, k, v, bias, self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if isinstance(self.rpe_table, nn.Conv2d):  # dwc_pe; isinstance lets TorchScript skip it for the table
            out = out + self.rpe_table(conv_input(q)).permute(0, 2, 3, 1)
        if isinstance(self.proj_out, nn.Linear):
            y = self.proj_drop(self.proj_out(out))
        else:
            y = self.proj_drop(pointwise(out, self.proj_out.weight, self.proj_out.bias))
        if return_positions:
            return y, pos.reshape(B, G, hk, wk, 2), reference.reshape(B, G, hk, wk, 2)
        return y

    @torch.jit.unused
    def _attention_captured(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """softmax(q·kᵀ/√c + B)·v with the weights (B×heads×HW×Ns) kept in ``captured_attention``."""
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        self.captured_attention = attn.detach()
        return torch.matmul(self.attn_drop(attn), v)

    # -- deployment ------------------------------------------------------------------------------------------------

    @torch.jit.unused
    def use_linear_projections(self) -> None:
        """Replace the 1×1-conv projections (``proj_q``/``proj_k``/``proj_v``/``proj_out``, the checkpoints' layout)
        by ``nn.Linear`` modules with the same weights, in place; the fast path's outputs are unchanged.

        For int8 deployment: torchao's ``quantize_`` quantizes ``nn.Linear`` weights only, so without this the D
        blocks' four GEMMs stayed fp32. After it, the state_dict holds C×C instead of C×C×1×1 weights and the
        reference path is unavailable: convert after loading weights, for inference."""
        for name in ("proj_q", "proj_k", "proj_v", "proj_out"):
            conv = getattr(self, name)
            if isinstance(conv, nn.Linear):
                continue
            setattr(self, name, linear_from_pointwise_conv(conv))

    # -- reference path (the authors' algorithm) -----------------------------------------------------------------

    def reference_forward(self, x: torch.Tensor, return_positions: bool = False):
        """The authors' algorithm on B×C×H×W, step by step."""
        if isinstance(self.proj_q, nn.Linear):
            raise RuntimeError(
                "the reference path needs the 1×1-conv projections; this module was converted for "
                "deployment by use_linear_projections()"
            )
        B, C, H, W = x.shape
        G, heads, hc = self.groups, self.heads, self.head_dim
        q = self.proj_q(x)
        if self.no_off:  # the authors run the offset network and zero its output; the result is the same
            offset = x.new_zeros(B * G, 2, H // self.stride, W // self.stride)
        else:
            q_off = q.reshape(B * G, self.group_dim, H, W)
            dw, ln, act, pw = self.conv_offset
            offset = pw(act(ln.reference_forward(dw(q_off))))  # (B·G)×2×Hk×Wk
        hk, wk = offset.shape[-2:]
        ns = hk * wk
        pos, reference = self._positions(offset.permute(0, 2, 3, 1))
        if self.no_off:
            x_sampled = F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride)
        else:
            x_sampled = F.grid_sample(
                x.reshape(B * G, self.group_dim, H, W), pos[..., (1, 0)], mode="bilinear", align_corners=True
            )
        x_sampled = x_sampled.reshape(B, C, 1, ns)
        q = q.reshape(B * heads, hc, H * W)
        k = self.proj_k(x_sampled).reshape(B * heads, hc, ns)
        v = self.proj_v(x_sampled).reshape(B * heads, hc, ns)
        attn = torch.einsum("bcm,bcn->bmn", q, k).mul(self.scale)
        if self.rpe_table is not None and not self.dwc_pe:
            rpe_bias = self.rpe_table[None].expand(B, -1, -1, -1)
            grid = query_grid(H, W, self.generation, x.dtype, x.device)[None].expand(B * G, -1, -1, -1)
            displacement = (grid.reshape(B * G, H * W, 2).unsqueeze(2) - pos.reshape(B * G, ns, 2).unsqueeze(1)).mul(
                0.5
            )
            attn_bias = F.grid_sample(
                rpe_bias.reshape(B * G, self.group_heads, *self.rpe_table.shape[-2:]),
                displacement[..., (1, 0)],
                mode="bilinear",
                align_corners=True,
            )
            attn = attn + attn_bias.reshape(B * heads, H * W, ns)
        attn = self.attn_drop(F.softmax(attn, dim=2))
        out = torch.einsum("bmn,bcn->bcm", attn, v)
        if self.rpe_table is not None and self.dwc_pe:
            out = out + self.rpe_table(q.reshape(B, C, H, W)).reshape(B * heads, hc, H * W)
        y = self.proj_drop(self.proj_out(out.reshape(B, C, H, W)))
        if return_positions:
            return y, pos.reshape(B, G, hk, wk, 2), reference.reshape(B, G, hk, wk, 2)
        return y
