"""Scaled dot-product attention with an additive bias, choosing the fastest correct kernel.

``scaled_dot_product_attention`` takes the position bias as ``attn_mask``. On CPU its fused (flash) kernel
cannot return the gradient of the mask, so when the bias is learnable and gradients are being recorded, SDPA
silently falls back to its generic math path, which is slower than plain matmul + softmax (0.73–0.83× the explicit
form on the D block, ``datvit bench levers attention``). This helper uses SDPA for inference
and on GPU, and the explicit form for CPU training and for bf16/fp16 on CPU, where CPU's flash kernel does not get
faster (the explicit form is 1.2–2× faster per attention shape of dat_tiny).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .ops import _needs_grad, _scripted_needs_grad
from .tracing import execution_mode


@register_notrace_function  # a fast-path switch: a leaf of fx graphs, which run what eager runs (see layers/tracing.py)
def biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(q·kᵀ/√c + bias)·v for q: N×…×L×c, k, v: N×…×S×c. ``bias`` is broadcastable to N×…×L×S, or
    has a leading dimension nW that divides N (N = B·nW, windows-minor: a per-window bias repeated over the
    batch). The explicit form adds such a bias by broadcasting over B; SDPA gets it expanded."""
    if not torch.jit.is_scripting():
        periodic = bias is not None and _periodic_bias(bias, q)
    else:
        periodic = bias is not None and bias.dim() == q.dim() and bias.shape[0] not in (1, q.shape[0])
    # one condition, not a named flag: TorchScript refines the Optional bias only inside the test itself
    if bias is None or not (
        q.device.type == "cpu"
        and (q.dtype in (torch.bfloat16, torch.float16) or (bias.requires_grad and torch.is_grad_enabled()))
    ):
        if bias is not None and periodic:
            n = bias.shape[0]
            bias = bias.unsqueeze(0).expand([q.shape[0] // n] + list(bias.shape)).flatten(0, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    scale = q.shape[-1] ** -0.5
    eager = False
    if not torch.jit.is_scripting():  # folded by TorchScript, which drops the branch (see ``execution_mode``)
        eager = _eager_inference(q, k, bias)
    else:  # scripted code runs as eager does: the same layouts in inference
        eager = not _scripted_needs_grad(q, k, bias)
    if eager:
        # q scaled straight into a contiguous tensor, and k copied row by row before its transposed view: matmul
        # then copies neither with a transposing gather (1.5× on dat_tiny's stage-1 windows in bf16)
        q = torch.mul(q, scale, out=torch.empty(q.shape, dtype=q.dtype, device=q.device))
        attn = torch.matmul(q, k.contiguous().transpose(-2, -1))
    else:
        attn = torch.matmul(q * scale, k.transpose(-2, -1))
    if periodic:
        n = bias.shape[0]
        attn.view([attn.shape[0] // n] + list(bias.shape)).add_(bias)
    else:
        attn = attn.add_(bias)
    if attn.dtype != torch.float32 and attn.shape[-1] <= 64:  # (a literal: TorchScript reads no globals)
        # ATen's CPU bf16 softmax is slow on short rows: 49-key windows in float32 output, then cast, 1.2× faster
        attn = attn.softmax(dim=-1, dtype=torch.float32).to(attn.dtype)
    else:
        attn = attn.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    return torch.matmul(attn, v)


@torch.jit.unused
def _periodic_bias(bias: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether ``bias`` has a leading dimension nW ∉ {1, N} that divides q's N (see ``biased_attention``). While
    exporting, a leading dimension that is symbolically 1 or N answers without a guard (a dynamic-size export
    must not ask whether its batch or its number of windows is 1)."""
    if bias.dim() != q.dim():
        return False
    n, total = bias.shape[0], q.shape[0]
    if torch.compiler.is_exporting():
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        if statically_known_true(n == 1) or statically_known_true(n == total):
            return False
    return n not in (1, total)


@torch.jit.unused
def _eager_inference(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> bool:
    """Eager mode (not torch.compile, export, FX or TorchScript tracing) with no gradient to record: where ``out=``
    and the explicit layouts above are allowed and pay (inductor picks its own layouts)."""
    if not execution_mode(q).is_eager:
        return False
    return not _needs_grad(q, k, bias)
