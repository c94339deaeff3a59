"""The D block under torch.compile: ``grid_sample`` stays ATen's kernel (an opaque custom op that inductor does not
decompose: its generated loops were ~4x slower), with the same values and gradients as ``F.grid_sample``; eager,
torch.export (and so ONNX) keep the plain ``aten.grid_sampler_2d``. Window attention's bias is contiguous so
freezing folds it in a vectorisable layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compile_helpers import compile_and_record
from datvit.layers import DeformableAttention, LocalAttention
from datvit.layers.ops import _grid_sample_op, grid_sample_bilinear


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 11, requires_grad=True)
    grid = (torch.rand(3, 5, 7, 2) * 2.4 - 1.2).requires_grad_(True)  # some samples outside: zeros padding
    return x, grid


def test_custom_op_is_grid_sample_values_and_gradients():
    x, grid = _inputs()
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    got = _grid_sample_op(x, grid)
    assert torch.equal(got, expected)
    g = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (x, grid), g)
    have = torch.autograd.grad(_grid_sample_op(x, grid), (x, grid), g)
    for a, b in zip(have, want):
        assert torch.equal(a, b)
    only_grid = torch.autograd.grad(_grid_sample_op(x.detach(), grid), grid, g)[0]  # no input gradient wanted
    assert torch.equal(only_grid, want[1])
    torch.library.opcheck(_grid_sample_op, (x, grid))


def _d_block():
    torch.manual_seed(0)
    m = DeformableAttention(32, 4, 2, 8, 1, 3, 2.0)
    with torch.no_grad():
        m.conv_offset[3].weight.normal_(0, 0.5)
        m.rpe_table.normal_(0, 1.0)
    return m


def test_compiled_d_block_keeps_aten_grid_sample_and_matches_eager():
    m = _d_block()
    x = torch.randn(2, 8, 8, 32, requires_grad=True)
    out, targets = compile_and_record(m, x)
    assert any("datvit.grid_sample_bilinear" in t for t in targets), targets
    assert not any("grid_sample" in t and "datvit" not in t for t in targets), targets
    expected = m(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # training through the op: aot_eager runs the custom op's registered backward
    torch._dynamo.reset()
    trained = torch.compile(m, backend="aot_eager", fullgraph=True)
    grads_c = torch.autograd.grad(trained(x).square().sum(), [x, *m.parameters()])
    grads_e = torch.autograd.grad(m(x).square().sum(), [x, *m.parameters()])
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compiled_inference_gathers_the_sampled_features():
    """Compiled inference samples keys/values by a four-corner gather of channel rows (inductor fuses it; the
    position bias keeps ATen's grid_sample): same values as eager's grid_sample, also for samples outside the map;
    with gradients the compiled block keeps grid_sample for both."""
    m = _d_block().eval()
    x = torch.randn(2, 8, 8, 32)
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def grid_sample_calls(**kwargs):
        torch._dynamo.reset()
        graphs.clear()
        result = torch.compile(m, backend=recording_backend, fullgraph=True)(x, **kwargs)
        return result, [
            str(n.target)
            for g in graphs
            for n in g.graph.nodes
            if n.op == "call_function" and "grid_sample" in str(n.target)
        ]

    with torch.no_grad():
        out, calls = grid_sample_calls()
        _, positions, _ = m(x, return_positions=True)
        expected = m(x)
    assert (positions.abs() > 1).any()  # some samples fall outside: zeros padding
    assert calls == ["datvit.grid_sample_bilinear.default"], calls  # the bias only
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    _, calls = grid_sample_calls()  # gradients recorded (the offsets need them): grid_sample for the features
    assert calls == ["datvit.grid_sample_bilinear.default"] * 2, calls
    with torch.no_grad():
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=True)  # inductor: the generated gather kernel
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)


def test_export_and_eager_see_plain_grid_sample():
    m = _d_block().eval()
    x = torch.randn(1, 8, 8, 32)
    exported = torch.export.export(m, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("grid_sampler" in t for t in targets) and not any("datvit" in t for t in targets), targets
    xs, grid = _inputs()
    assert torch.equal(
        grid_sample_bilinear(xs, grid),
        F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=True),
    )


def test_window_bias_is_contiguous():
    attn = LocalAttention(16, 2, 4)
    bias = attn.relative_position_bias()
    assert bias.shape == (2, 16, 16) and bias.is_contiguous()


def test_linear_projections_keep_the_fast_path_and_refuse_the_reference():
    """use_linear_projections (for int8 deployment) swaps 1×1 convs for nn.Linear: same outputs; reference refused."""
    import pytest
    import timm

    from datvit.layers import ConvMlp
    from dense_helpers import TINY

    for variant, kwargs in TINY.items():
        torch.manual_seed(0)
        model = timm.create_model(variant, num_classes=3, **kwargs).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
            for m in model.modules():
                if hasattr(m, "use_linear_projections"):
                    m.use_linear_projections()
            got = model(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        converted = [m for m in model.modules() if isinstance(m, (DeformableAttention, ConvMlp))]
        assert converted
        for m in converted:
            assert all(
                isinstance(layer, torch.nn.Linear)
                for layer in (
                    [m.proj_q, m.proj_k, m.proj_v, m.proj_out]
                    if isinstance(m, DeformableAttention)
                    else [m.linear1[0], m.linear2[0]]
                )
            )
        model.set_reference(True)
        with pytest.raises(RuntimeError, match="use_linear_projections"):
            model(x)
