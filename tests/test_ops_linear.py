"""``datvit.layers.ops.dense``: the fast paths' token projection. On CPU in float32 it runs as a 1×1 convolution on a
channels-last view (oneDNN, about twice MKL's sgemm on the EPYC machines); values and gradients equal ``F.linear``
to float rounding; so in bf16 (a bf16 model or bf16 autocast) on CPUs with native bf16, eagerly; everywhere else
(export, tracing, TorchScript, fp16, tensor subclasses, bf16 under torch.compile) it *is* ``F.linear``, so exported
graphs and int8 keep their ``linear``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compile_helpers import compile_and_record
from conftest import RecordOps
from datvit.layers import LocalAttention, NeighborhoodAttention2D, ops
from datvit.layers.mlp import ConvMlp, Mlp
from datvit.layers.ops import _onednn_linear_backward_op, _onednn_linear_op, dense, dense_gelu, residual_depthwise_conv


def _case(shape=(2, 5, 7, 24), c_out=40, bias=True):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(c_out, shape[-1], requires_grad=True)
    b = torch.randn(c_out, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (3, 11, 24), (6, 24), (1, 1, 1, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_equals_linear_values_and_gradients(shape, bias):
    x, w, b = _case(shape, bias=bias)
    inputs = (x, w) + ((b,) if bias else ())
    want = F.linear(x, w, b)
    got = dense(x, w, b)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


def test_dense_runs_as_a_convolution_on_cpu_float32():
    x, w, b = _case()
    with RecordOps() as rec:
        dense(x, w, b)
    assert "aten.convolution" in rec.ops and "aten.addmm" not in rec.ops, rec.ops


_FUSED = "mkldnn._convolution_pointwise"


@pytest.mark.skipif(ops._POINTWISE_CONV is None, reason="this torch build has no oneDNN pointwise convolution")
@pytest.mark.parametrize("dtype", ["float32", "autocast"])
def test_gelu_fused_into_the_projection_in_inference_only(dtype):
    """Eager inference: GELU is the 1×1 convolution's oneDNN post-op (one op, no separate gelu), equal to
    F.gelu(F.linear) (float32: 1e-5; bf16 autocast: bf16 rounding). With gradients: the unfused ops, same values."""
    if dtype == "autocast" and not ops._NATIVE_BF16:
        pytest.skip("no native bf16 on this CPU")
    x, w, b = _case((2, 5, 7, 24), c_out=96)
    want = F.gelu(F.linear(x, w, b)).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        with torch.no_grad(), RecordOps() as rec:
            fused = dense_gelu(x, w, b)
        assert _FUSED in rec.ops and "aten.gelu" not in rec.ops, rec.ops
        with RecordOps() as rec:
            trained = dense_gelu(x, w, b)
        assert _FUSED not in rec.ops and "aten.gelu" in rec.ops and trained.requires_grad
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(fused.float(), want, **tol)
    torch.testing.assert_close(trained.detach().float(), want, **tol)


@pytest.mark.skipif(ops._POINTWISE_CONV is None, reason="this torch build has no oneDNN pointwise convolution")
def test_gelu_fused_into_the_residual_depthwise_conv():
    """DAT++'s MLP: GELU(h + dwconv(h)) with the GELU as post-op in inference, equal to the unfused form."""
    torch.manual_seed(0)
    h = torch.randn(2, 6, 5, 16)
    w, b = torch.randn(16, 1, 3, 3) * 0.3, torch.randn(16)
    want = F.gelu(h + F.conv2d(h.permute(0, 3, 1, 2), w, b, padding=1, groups=16).permute(0, 2, 3, 1))
    with torch.no_grad(), RecordOps() as rec:
        got = residual_depthwise_conv(h, w, b, gelu=True)
    assert _FUSED in rec.ops and "aten.gelu" not in rec.ops, rec.ops
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        residual_depthwise_conv(h, w.requires_grad_(), b, gelu=True).detach(), want, rtol=1e-5, atol=1e-5
    )


def test_dense_takes_non_contiguous_tokens():
    x, w, b = _case((2, 7, 5, 24))
    xt = x.transpose(1, 2)  # a strided view
    torch.testing.assert_close(dense(xt, w, b), F.linear(xt, w, b), rtol=1e-5, atol=1e-5)
    empty = torch.randn(0, 24)
    assert dense(empty, w, b).shape == (0, 40)


def test_dense_is_linear_for_other_dtypes_and_fp16_autocast():
    x, w, b = _case()
    with RecordOps() as rec:
        out = dense(x.double(), w.double(), b.double())
    assert out.dtype == torch.float64 and "aten.convolution" not in rec.ops
    with torch.autocast("cpu", dtype=torch.float16), RecordOps() as rec:
        out = dense(x, w, b)
    assert out.dtype == torch.float16 and "aten.convolution" not in rec.ops


@pytest.mark.parametrize("autocast", [False, True])
def test_dense_in_bf16_follows_the_cpu(autocast, monkeypatch):
    """bf16 (a bf16 model, or bf16 autocast on float32 weights): the 1×1 convolution where oneDNN has native bf16
    kernels, F.linear elsewhere; values and gradients as F.linear's to bf16 rounding either way."""
    x, w, b = _case((4, 9, 48), c_out=64)
    args = (x, w, b) if autocast else tuple(t.detach().bfloat16().requires_grad_() for t in (x, w, b))

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), RecordOps() as rec:
            got = dense(*args)
            want = F.linear(*args)
        return got, want, rec.ops

    for native in (True, False) if ops._NATIVE_BF16 else (False,):
        monkeypatch.setattr(ops, "_NATIVE_BF16", native)
        got, want, seen = run()
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert ("aten.convolution" in seen) == native, seen
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=5e-2)
        g = torch.randn_like(want)
        for a, e in zip(torch.autograd.grad(got, args, g), torch.autograd.grad(want, args, g)):
            assert a.dtype == e.dtype
            torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=0.2)


def test_exported_and_traced_graphs_keep_linear():
    m = Mlp(16, 2).eval()
    x = torch.randn(2, 3, 3, 16)
    exported = torch.export.export(m, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("linear" in t for t in targets) and not any("convolution" in t for t in targets), targets
    traced = torch.jit.trace(m, (x,))
    assert "aten::linear" in str(traced.graph) and "_convolution" not in str(traced.graph)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["mlp", "conv_mlp", "window", "neighborhood"])
def test_fast_paths_use_dense_and_match_their_reference(module):
    torch.manual_seed(0)
    m = {
        "mlp": lambda: Mlp(24, 2),
        "conv_mlp": lambda: ConvMlp(24, 2),
        "window": lambda: LocalAttention(24, 3, 4),
        "neighborhood": lambda: NeighborhoodAttention2D(24, 3, 3),
    }[module]()
    x = torch.randn(2, 8, 8, 24, requires_grad=True)
    with RecordOps() as rec:
        out = m(x)
    assert "aten.convolution" in rec.ops and "aten.addmm" not in rec.ops and "aten.mm" not in rec.ops, rec.ops
    ref = m.reference_forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + list(m.parameters()), g, allow_unused=True)
    want = torch.autograd.grad(ref, [x] + list(m.parameters()), g, allow_unused=True)
    for a, e in zip(got, want):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_custom_ops_pass_opcheck_and_match_linear_gradients():
    x, w, b = _case((10, 24))
    x2 = x.detach().reshape(10, 24).requires_grad_(True)
    torch.library.opcheck(_onednn_linear_op, (x2, w, b))
    torch.library.opcheck(_onednn_linear_op, (x2, w, None))
    torch.library.opcheck(_onednn_linear_backward_op, (torch.randn(10, 40), x2.detach(), w.detach()))
    y = _onednn_linear_op(x2, w, b)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x2, w, b), g)
    want = torch.autograd.grad(F.linear(x2, w, b), (x2, w, b), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


def test_compiled_dense_is_the_custom_op_without_graph_breaks():
    m = Mlp(16, 2)
    x = torch.randn(2, 3, 3, 16, requires_grad=True)
    out, targets = compile_and_record(m, x)
    assert any("datvit.onednn_linear" in t for t in targets), targets
    torch.testing.assert_close(out, m(x), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + list(m.parameters()), g)
    want = torch.autograd.grad(m(x), [x] + list(m.parameters()), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


def test_inductor_with_freezing_and_dynamic_batch():
    """Inlined, the 1×1 convolution's size-1 dims got stride 0 from inductor with dynamic shapes, and oneDNN then
    returned NCHW where the graph expected channels-last (an assertion at run time): the custom op prevents it."""
    from datvit import optimize_for_inference

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Sequential(Mlp(16, 2), Mlp(16, 2)).eval()
    compiled = optimize_for_inference(m, dynamic=True)
    with torch.no_grad():
        for batch in (4, 3, 5):
            x = torch.randn(batch, 8, 8, 16)
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)


def test_int8_weights_fall_back_to_linear():
    torchao = pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64)).eval()
    x = torch.randn(4, 64)
    want = m(x)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    got = dense(x, m[0].weight, m[0].bias)
    assert torchao is not None and type(m[0].weight) not in (torch.Tensor, nn.Parameter)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
