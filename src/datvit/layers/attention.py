"""Scaled dot-product attention with an additive bias, choosing the fastest correct kernel.

``scaled_dot_product_attention`` takes the position bias as ``attn_mask``. On CPU its fused (flash) kernel
cannot return the gradient of the mask, so when the bias is learnable and gradients are being recorded, SDPA
silently falls back to its generic math path, which is slower than plain matmul + softmax (D block at batch 32,
forward+backward: math path 0.83× the explicit form). This helper uses SDPA for inference and on GPU, and for CPU
training :class:`ChunkedBiasedAttention`, the explicit form computed a few heads at a time.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# Bytes of attention scores per chunk of :class:`ChunkedBiasedAttention`: the scores, probabilities and their
# gradients of one chunk stay in the core's L2 (512 KB on Zen 3) and the shared L3, instead of streaming
# B·heads·L·S floats through memory once per elementwise pass (`benchmarks/levers.py attention` measures it).
CHUNK_BYTES = 1 << 20


def _flatten(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, *t.shape[-2:])


class ChunkedBiasedAttention(torch.autograd.Function):
    """softmax(q·kᵀ·scale + bias)·v with its backward, both computed over chunks of the batch×heads axis.

    Same algorithm as the explicit form (``baddbmm``, ``softmax``, ``bmm``; the backward is softmax's own
    ``_softmax_backward_data``), so it matches it to float rounding. What changes is the memory traffic: each
    chunk's L×S scores are produced, normalised and consumed while they are still in cache, and the backward
    writes the bias gradient straight into its buffer. Saved for backward: q, k, v and the probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float):
        lead, L, S, c = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
        n = lead.numel()
        q3, k3, v3 = _flatten(q, n), _flatten(k, n), _flatten(v, n)
        b3 = bias.expand(*lead, L, S).reshape(n, L, S)
        chunk = max(1, CHUNK_BYTES // (L * S * q.element_size()))
        probs = q.new_empty(n, L, S)
        out = q.new_empty(n, L, c)
        for i in range(0, n, chunk):
            s = slice(i, i + chunk)
            scores = torch.baddbmm(b3[s], q3[s], k3[s].transpose(1, 2), alpha=scale)
            torch.softmax(scores, -1, out=probs[s])
            torch.bmm(probs[s], v3[s], out=out[s])
        ctx.save_for_backward(q3, k3, v3, probs)
        ctx.scale, ctx.chunk, ctx.lead, ctx.bias_shape = scale, chunk, lead, bias.shape
        return out.view(*lead, L, c)

    @staticmethod
    def backward(ctx, grad_out):
        q3, k3, v3, probs = ctx.saved_tensors
        n, L, S = probs.shape
        g3 = _flatten(grad_out, n)
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        dscores = torch.empty_like(probs)
        for i in range(0, n, ctx.chunk):
            s = slice(i, i + ctx.chunk)
            torch.bmm(probs[s].transpose(1, 2), g3[s], out=dv[s])
            dprobs = torch.bmm(g3[s], v3[s].transpose(1, 2))
            dscores[s] = torch._softmax_backward_data(dprobs, probs[s], -1, probs.dtype)
            torch.bmm(dscores[s], k3[s], out=dq[s]).mul_(ctx.scale)
            torch.bmm(dscores[s].transpose(1, 2), q3[s], out=dk[s]).mul_(ctx.scale)
        lead = ctx.lead
        dbias = None
        if ctx.needs_input_grad[3]:
            dbias = dscores.view(*lead, L, S).sum_to_size(ctx.bias_shape)
        return (dq.view(*lead, L, -1), dk.view(*lead, S, -1), dv.view(*lead, S, -1), dbias, None)


def explicit_biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                              dropout_p: float = 0.0) -> torch.Tensor:
    """The textbook form, matmul + bias + softmax + matmul (with attention dropout)."""
    attn = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if bias is not None:
        attn = attn.add_(bias)
    attn = attn.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    return torch.matmul(attn, v)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                     dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√c + bias)·v for q: …×L×c, k, v: …×S×c, bias broadcastable to …×L×S."""
    if bias is None or not (bias.requires_grad and torch.is_grad_enabled() and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    if dropout_p > 0 or torch.compiler.is_compiling():
        return explicit_biased_attention(q, k, v, bias, dropout_p)
    return ChunkedBiasedAttention.apply(q, k, v, bias, q.shape[-1] ** -0.5)
