"""The CPU training kernel of biased attention (``ChunkedBiasedAttention``) against the explicit form and autograd's
numerical gradients: full and broadcast biases, −inf masks, ragged last chunks; and that ``biased_attention``
routes each case (CPU training, inference, dropout) to the intended kernel."""
from __future__ import annotations

import pytest
import torch

from datvit.layers import attention
from datvit.layers.attention import ChunkedBiasedAttention, biased_attention, explicit_biased_attention

CASES = [  # (lead dims, L, S, c, bias shape): D block (full bias), window (bias broadcast over windows), NA-like
    ((2, 2), 4, 3, 2, (2, 2, 4, 3)),
    ((3, 2), 3, 3, 2, (1, 2, 3, 3)),
    ((4, 1), 2, 3, 2, (4, 1, 1, 3)),
]


@pytest.mark.parametrize("lead,L,S,c,bias_shape", CASES)
def test_gradcheck_float64(lead, L, S, c, bias_shape, monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_BYTES", 3 * L * S * 8)   # chunks of 3 heads: a ragged last chunk
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*lead, n, c, generator=g, dtype=torch.float64, requires_grad=True) for n in (L, S, S))
    bias = torch.randn(*bias_shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ChunkedBiasedAttention.apply(*a, c ** -0.5), (q, k, v, bias))


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_matches_explicit_float32_with_masks(chunk_bytes, monkeypatch):
    """float32 at a D-block-like shape with −inf entries (the neighborhood masks): forward 1e-5, gradients 1e-4."""
    monkeypatch.setattr(attention, "CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 49, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 4, 49, 49)
    bias[..., 5:9] = float("-inf")
    bias.requires_grad_()
    grad = torch.randn(2, 4, 49, 16)
    outs, grads = [], []
    for fn in (biased_attention, explicit_biased_attention):
        out = fn(q, k, v, bias)
        outs.append(out)
        grads.append(torch.autograd.grad(out, (q, k, v, bias), grad))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (grads[0][3][..., 5:9] == 0).all()


def test_routing(monkeypatch):
    calls = []
    monkeypatch.setattr(ChunkedBiasedAttention, "apply", lambda *a: calls.append("chunked") or a[0])
    q = torch.randn(1, 2, 4, 8)
    bias = torch.zeros(1, 2, 4, 4, requires_grad=True)
    biased_attention(q, q, q, bias)                          # CPU training: the chunked kernel
    assert calls == ["chunked"]
    with torch.no_grad():
        biased_attention(q, q, q, bias)                      # inference: SDPA
    biased_attention(q, q, q, bias.detach())                 # bias without gradient: SDPA
    biased_attention(q, q, q, bias, dropout_p=0.5)           # dropout: the explicit form
    assert calls == ["chunked"]
