"""Neighborhood attention in pure PyTorch against a brute-force masked full attention with NATTEN's semantics
(window clamped inside the map, bias indexed by key − query, maps smaller than the kernel zero-padded)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_fast_matches_reference
from datvit.layers import NeighborhoodAttention2D, neighborhood_attention_gather, neighborhood_attention_tiled


def brute_force(q, k, v, rpb, ks):
    """q, k, v: B×h×H×W×c (q scaled). Full attention with mask 'key inside the query's clamped window'."""
    B, h, H, W, c = q.shape
    iy, ix = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    iy, ix = iy.flatten(), ix.flatten()
    sy = (iy - ks // 2).clamp(0, H - ks)
    sx = (ix - ks // 2).clamp(0, W - ks)
    inside = (
        (iy[None, :] >= sy[:, None])
        & (iy[None, :] < sy[:, None] + ks)
        & (ix[None, :] >= sx[:, None])
        & (ix[None, :] < sx[:, None] + ks)
    )
    dy = (iy[None, :] - iy[:, None] + ks - 1).clamp(0, 2 * ks - 2)
    dx = (ix[None, :] - ix[:, None] + ks - 1).clamp(0, 2 * ks - 2)
    bias = rpb[:, dy, dx]
    attn = q.reshape(B, h, H * W, c) @ k.reshape(B, h, H * W, c).transpose(-1, -2) + bias
    attn = attn.masked_fill(~inside, float("-inf")).softmax(-1)
    return (attn @ v.reshape(B, h, H * W, c)).reshape(B, h, H, W, c)


CASES = [((7, 7), 7), ((9, 13), 7), ((14, 14), 7), ((20, 11), 7), ((12, 12), 5), ((10, 6), 3), ((15, 16), 3)]


@pytest.mark.parametrize("shape,ks", CASES)
@pytest.mark.parametrize("tile", [3, 7, 8])
def test_tiled_and_gather_match_brute_force(shape, ks, tile):
    torch.manual_seed(0)
    B, h, c = 2, 2, 8
    q, k, v = (torch.randn(B, h, *shape, c) for _ in range(3))
    rpb = torch.randn(h, 2 * ks - 1, 2 * ks - 1)
    expected = brute_force(q * c**-0.5, k, v, rpb, ks)
    got_gather = neighborhood_attention_gather(q * c**-0.5, k, v, rpb, ks)
    torch.testing.assert_close(got_gather, expected, atol=1e-5, rtol=1e-5)
    qkv = torch.stack([q, k, v]).permute(1, 3, 4, 0, 2, 5)  # B×H×W×3×heads×c
    got_tiled = neighborhood_attention_tiled(qkv, rpb, ks, tile)
    torch.testing.assert_close(
        got_tiled, expected.permute(0, 2, 3, 1, 4).reshape(B, *shape, h * c), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("shape", [(14, 14), (9, 13), (3, 5), (7, 7), (6, 12)])
def test_module_fast_matches_reference_forward_and_grad(shape):
    torch.manual_seed(0)
    y = assert_fast_matches_reference(NeighborhoodAttention2D(16, 7, 2), torch.randn(2, *shape, 16))[0]
    assert y.shape == (2, *shape, 16)


def test_small_map_is_padded_before_qkv():
    """A 3×5 map with a 7×7 kernel: NATTEN semantics zero-pad the *input* to 7×7 so the padded tokens (value =
    qkv bias) take part in every query's window. Check against brute force on the explicitly padded input."""
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(16, 7, 2).eval()
    with torch.no_grad():
        m.qkv.bias.normal_()
    x = torch.randn(1, 3, 5, 16)
    xp = torch.nn.functional.pad(x, (0, 0, 0, 2, 0, 4))
    q, k, v = m.qkv(xp).reshape(1, 7, 7, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)
    expected = brute_force(q * m.scale, k, v, m.rpb, 7).permute(0, 2, 3, 1, 4).reshape(1, 7, 7, 16)[:, :3, :5]
    torch.testing.assert_close(m(x), m.proj(expected), atol=1e-5, rtol=1e-5)


def test_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        NeighborhoodAttention2D(16, 6, 2)


def test_flex_attention_path_matches_reference():
    """The flex_attention path (the default on CUDA) against the plain path. On CPU flex runs compiled and
    forward-only, so this checks inference on a small map; with gradients enabled the tiled path is used."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(16, 5, 2).eval()
    m.use_flex = True
    x = torch.randn(2, 9, 11, 16)
    with torch.no_grad():
        y = m(x)
        y_ref = m.reference_forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert not m._flex_enabled(x.requires_grad_())
