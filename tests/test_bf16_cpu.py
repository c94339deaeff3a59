"""bf16 on CPU (bf16 autocast or a bf16 model), the deployment dtype of CPUs with native bf16 kernels:
attention runs as explicit matmul + softmax (CPU's flash kernel was 1.2–2× slower in bf16), the D block's sampling
geometry stays float32, and a compiled bf16 model keeps inductor's own ``linear`` (no graph break, no custom op)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compile_helpers import compile_and_record
from conftest import RecordOps, reduced_kwargs
from datvit.layers import DeformableAttention
from datvit.layers.attention import biased_attention
from datvit.models import DAT


@pytest.mark.parametrize("bias_batch", [1, 6])
@pytest.mark.parametrize("keys", [49, 100])  # ≤ 64 keys: the softmax runs with float32 output, then is cast
def test_bf16_attention_on_cpu_is_explicit_and_matches_fp32_sdpa(bias_batch, keys):
    torch.manual_seed(0)
    q = torch.randn(6, 3, 49, 16)
    k, v = (torch.randn(6, 3, keys, 16) for _ in range(2))
    bias = torch.randn(bias_batch, 3, 49, keys)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    with torch.no_grad(), RecordOps() as rec:
        got = biased_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias.bfloat16())
    assert got.dtype == torch.bfloat16
    assert "aten.bmm" in rec.ops and not any("scaled_dot_product" in op for op in rec.ops), rec.ops
    softmax_out = [dtypes for name, dtypes in rec.calls if name == "aten._softmax"]
    assert softmax_out and all(d == (torch.float32 if keys <= 64 else torch.bfloat16,) for d in softmax_out), rec.calls
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    with torch.no_grad(), RecordOps() as rec:  # float32 inference keeps SDPA's fused kernel
        biased_attention(q, k, v, bias)
    assert any("scaled_dot_product" in op for op in rec.ops), rec.ops


@pytest.mark.parametrize("path", ["sdpa", "explicit-grad", "explicit-bf16"])
def test_per_window_bias_is_repeated_over_the_batch(path):
    # window attention passes its bias + shifted-window mask as nW×heads×L×S for a batch of B·nW windows
    # (windows-minor); each path must read it as the same bias expanded over B
    torch.manual_seed(0)
    batch, windows = 3, 4
    q, k, v = (torch.randn(batch * windows, 2, 9, 8) for _ in range(3))
    bias = torch.randn(windows, 2, 9, 9, requires_grad=path == "explicit-grad")
    expanded = bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(batch * windows, 2, 9, 9)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=expanded.detach())
    if path == "explicit-bf16":
        with torch.no_grad():
            got = biased_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias.bfloat16()).float()
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
        return
    with RecordOps() as rec:
        got = biased_attention(q, k, v, bias)
    assert any("scaled_dot_product" in op for op in rec.ops) == (path == "sdpa"), rec.ops
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if path == "explicit-grad":
        weights = torch.randn_like(got)
        (grad,) = torch.autograd.grad((got * weights).sum(), bias)
        ref_bias = bias.detach().clone().requires_grad_(True)
        ref_expanded = ref_bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(batch * windows, 2, 9, 9)
        ref = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5 + ref_expanded, -1) @ v
        (want_grad,) = torch.autograd.grad((ref * weights).sum(), ref_bias)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5)


def test_eager_inference_layouts_change_no_value(monkeypatch):
    # eager inference scales q into a contiguous tensor and copies k before its transposed view; the values must
    # be exactly those of the plain form (used under torch.compile and with gradients)
    import datvit.layers.attention as attention

    torch.manual_seed(0)
    qkv = torch.randn(6, 49, 3, 3, 16).bfloat16()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as the window blocks pass them
    bias = torch.randn(1, 3, 49, 49).bfloat16()
    taken = []
    real = attention._eager_inference
    monkeypatch.setattr(attention, "_eager_inference", lambda *a: taken.append(real(*a)) or taken[-1])
    with torch.no_grad():
        fast = biased_attention(q, k, v, bias)
        monkeypatch.setattr(attention, "_eager_inference", lambda *a: False)
        plain = biased_attention(q, k, v, bias)
    assert taken == [True]
    assert torch.equal(fast, plain)
    leaf = bias.float().requires_grad_(True)
    assert not real(q.float(), k.float(), leaf)  # recording gradients: the plain form


def test_d_block_samples_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    m = DeformableAttention(32, 4, 2, 8, 1, 3, 2.0).eval()
    with torch.no_grad():
        m.conv_offset[3].weight.normal_(0, 0.5)
        m.rpe_table.normal_(0, 1.0)
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        want, want_pos, _ = m(x, return_positions=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), RecordOps() as rec:
            got, pos, ref = m(x, return_positions=True)
    # the position bias by grid_sample, the keys/values by embedding_bag (table, indices, offsets, weights)
    samples = [dtypes for name, dtypes in rec.calls if "grid_sampler" in name or "embedding_bag" in name]
    assert samples == [(torch.float32, torch.int64, torch.int64, torch.float32), (torch.float32, torch.float32)], (
        samples
    )
    assert pos.dtype == ref.dtype == torch.float32
    # the offsets come from bf16 projections; the positions built from them are not rounded to bf16 on top
    assert (pos - want_pos).abs().max() < 0.02
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_bf16_model_compiles_in_one_graph_with_inductors_linear(family):
    torch.manual_seed(0)
    model = DAT(**reduced_kwargs(family, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, targets = compile_and_record(model, x)
    assert not any("onednn_linear" in t for t in targets), targets
    assert any("linear" in t for t in targets), targets
    assert out.dtype == torch.bfloat16
    assert (out.float() - fp32).abs().max() < 0.05 * fp32.abs().max() + 0.05
