"""Deformable attention: fast path vs the authors' algorithm (forward 1e-5, gradients 1e-4) across both
generations, strides, groups, odd and non-square sizes and collapsed key grids; the 4-corner bias gather vs
grid_sample; the reference-point conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import RecordOps, assert_close_scaled, assert_fast_matches_reference
from datvit.layers import DeformableAttention, deformable_position_bias, query_grid, reference_points


def make(generation="v1", dim=32, heads=4, groups=2, fmap=14, stride=1, ksize=5, factor=2.0, **kw):
    torch.manual_seed(0)
    m = DeformableAttention(dim, heads, groups, fmap, stride, ksize, factor, generation=generation, **kw)
    with torch.no_grad():  # non-trivial weights: large offsets, strong position bias
        for p in m.conv_offset.parameters():
            p.normal_(0, 0.5)
        if isinstance(m.rpe_table, torch.nn.Parameter):
            m.rpe_table.normal_(0, 1.0)
    return m


def check_paths(m, shape, batch=2):
    _, (pos_f, ref_f), (pos_r, ref_r) = assert_fast_matches_reference(
        m, torch.randn(batch, *shape, m.dim), return_positions=True
    )
    torch.testing.assert_close(pos_f, pos_r, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ref_f, ref_r)
    return pos_f


V1_CASES = [  # (shape, stride, ksize, factor, groups)
    ((14, 14), 1, 5, 2.0, 2),
    ((7, 7), 1, 3, 2.0, 4),
    ((13, 9), 1, 5, 2.0, 2),
    ((28, 28), 2, 7, 2.0, 1),
    ((56, 40), 4, 9, 1.0, 1),
    ((14, 14), 1, 5, -1.0, 2),
    ((1, 1), 1, 3, 2.0, 2),
]
PP_CASES = [
    ((56, 56), 8, 9, -1.0, 1),
    ((28, 28), 4, 7, -1.0, 2),
    ((14, 14), 2, 5, -1.0, 4),
    ((7, 7), 1, 3, -1.0, 2),
    ((23, 31), 4, 7, -1.0, 2),
    ((7, 7), 8, 9, -1.0, 1),
    ((2, 9), 2, 5, -1.0, 2),
    ((14, 14), 2, 5, 3.0, 2),
    ((1, 1), 1, 3, -1.0, 2),
]


@pytest.mark.parametrize("shape,stride,ksize,factor,groups", V1_CASES)
def test_v1_fast_matches_reference(shape, stride, ksize, factor, groups):
    check_paths(make("v1", groups=groups, stride=stride, ksize=ksize, factor=factor), shape)


@pytest.mark.parametrize("shape,stride,ksize,factor,groups", PP_CASES)
def test_pp_fast_matches_reference(shape, stride, ksize, factor, groups):
    pos = check_paths(make("pp", groups=groups, stride=stride, ksize=ksize, factor=factor), shape)
    if factor < 0:
        assert pos.abs().max() <= 1.0


def test_clamp_is_exercised():
    pos = check_paths(make("pp", groups=2, stride=2, ksize=5, factor=-1.0), (14, 14))
    assert (pos.abs() == 1.0).float().mean() > 0.05


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_without_position_bias_and_options(generation):
    check_paths(make(generation, use_pe=False), (14, 14))
    check_paths(make(generation, dwc_pe=True), (14, 14))
    check_paths(make(generation, no_off=True, stride=2, ksize=2), (14, 14))


def test_collapsed_key_grid_has_no_nan():
    """DAT++ divides by (Hk − 1); a 1×1 key grid must give finite outputs and gradients (spec §6)."""
    m = make("pp", stride=8, ksize=9)
    x = torch.randn(1, 5, 5, 32, requires_grad=True)
    y, pos, ref = m(x, return_positions=True)
    assert pos.shape[2:4] == (1, 1)
    assert torch.isfinite(y).all() and torch.equal(ref, torch.zeros_like(ref))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_position_bias_gather_matches_grid_sample():
    torch.manual_seed(0)
    B, G, hg, H, W = 2, 3, 2, 6, 9
    table = torch.randn(G * hg, 11, 17)
    pos = torch.rand(B, G, 20, 2) * 2.6 - 1.3  # some positions outside [−1, 1] (v1 is not clamped)
    grid = query_grid(H, W, "v1")
    ours = deformable_position_bias(table, pos, grid)
    disp = (grid.reshape(1, H * W, 1, 2) - pos.reshape(B * G, 1, 20, 2)) * 0.5
    expected = F.grid_sample(
        table[None].expand(B, -1, -1, -1).reshape(B * G, hg, 11, 17),
        disp[..., (1, 0)],
        mode="bilinear",
        align_corners=True,
    ).reshape(B, G * hg, H * W, 20)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "groups,hg,H,W,ns,t", [(3, 2, 6, 9, 20, (11, 17)), (1, 2, 12, 12, 9, (23, 23)), (4, 1, 1, 5, 1, (3, 9))]
)
def test_position_bias_gradients_match_grid_sample(groups, hg, H, W, ns, t):
    torch.manual_seed(1)
    B = 2
    table = torch.randn(groups * hg, *t, requires_grad=True)
    pos = (torch.rand(B, groups, ns, 2) * 2.6 - 1.3).requires_grad_()
    grid = query_grid(H, W, "pp")
    disp = (grid.reshape(1, H * W, 1, 2) - pos.reshape(B * groups, 1, ns, 2)) * 0.5
    expected = F.grid_sample(
        table[None].expand(B, -1, -1, -1).reshape(B * groups, hg, *t),
        disp[..., (1, 0)],
        mode="bilinear",
        align_corners=True,
    ).reshape(B, groups * hg, H * W, ns)
    ours = deformable_position_bias(table, pos, grid)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(ours)
    for a, b, name in zip(
        torch.autograd.grad(ours, [table, pos], g), torch.autograd.grad(expected, [table, pos], g), ["table", "pos"]
    ):
        assert_close_scaled(a, b, 1e-5, name)


def test_reference_point_conventions():
    v1 = reference_points(4, 2, "v1")[0]
    torch.testing.assert_close(v1[:, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(v1[0, :, 1], torch.tensor([-0.5, 0.5]))
    pp = reference_points(3, 1, "pp")[0]
    torch.testing.assert_close(pp[:, 0, 0], torch.tensor([0.5 / 2 * 2 - 1, 1.5 / 2 * 2 - 1, 2.5 / 2 * 2 - 1]))
    assert torch.equal(pp[:, 0, 1], torch.zeros(3))  # size 1 → 0, not NaN
    qg = query_grid(3, 1, "pp")
    torch.testing.assert_close(qg[:, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(qg[:, 0, 1], torch.zeros(3))


def test_padding_rule_of_offset_conv():
    assert make("pp", stride=4, ksize=4).conv_offset[0].padding == (0, 0)
    assert make("pp", stride=2, ksize=5).conv_offset[0].padding == (2, 2)
    assert make("v1", stride=4, ksize=4).conv_offset[0].padding == (2, 2)


def test_bad_groups_rejected():
    with pytest.raises(ValueError, match="divisible"):
        DeformableAttention(30, 3, 4, 14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keys_sampled_by_embedding_bag_equal_grid_sample(dtype):
    """Eager CPU samples keys/values with one embedding_bag (bags of four corner rows, bilinear weights): the same
    values as the authors' grid_sample, bit for bit (also outside the map and at whole-pixel positions), and the
    same gradients for the map and the positions; FX tracing and TorchScript tracing keep grid_sample."""
    from datvit.layers.ops import sample_channels_last

    torch.manual_seed(0)
    B, H, W, C, G = 3, 9, 11, 24, 3
    x = torch.randn(B, H, W, C).to(dtype).requires_grad_(True)
    pos = torch.rand(B * G, 5, 4, 2) * 2.6 - 1.3
    pos[0, 0, 0] = torch.tensor([0.0, 0.0])
    pos[0, 0, 1] = torch.tensor([-1.0, 1.0])  # corners of the map: integer pixel coordinates
    pos.requires_grad_(True)
    assert (pos.abs() > 1).any()

    def authors(x, pos):
        maps = x.permute(0, 3, 1, 2).reshape(B * G, C // G, H, W).float()
        out = F.grid_sample(maps, pos.flip(-1), mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(B, C, -1).transpose(1, 2).to(dtype)

    with RecordOps() as rec:
        got = sample_channels_last(x, pos, G)
    assert any("embedding_bag" in n for n in rec.ops) and not any("grid_sampler" in n for n in rec.ops)
    want = authors(x, pos)
    assert got.dtype == dtype and torch.equal(got, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, pos), g), torch.autograd.grad(want, (x, pos), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    traced = torch.fx.symbolic_trace(lambda x, pos: sample_channels_last(x, pos, G))
    assert any("grid_sample" in str(n.target) for n in traced.graph.nodes)
    with torch.no_grad():
        jit = torch.jit.trace(lambda x, pos: sample_channels_last(x, pos, G), (x, pos))
    assert "grid_sampler" in str(jit.graph) and "embedding_bag" not in str(jit.graph)
