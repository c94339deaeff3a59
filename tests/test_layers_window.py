"""Local / shifted window attention: the fast path against the authors' algorithm and against a brute-force
full attention with an explicit "same window, same region, real key" mask, on sizes that need padding."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_fast_matches_reference
from datvit.layers import LocalAttention, ShiftWindowAttention, relative_position_index, window_attention_mask


def make(kind: str, dim=24, heads=3, window=7, fmap=14):
    torch.manual_seed(0)
    if kind == "L":
        m = LocalAttention(dim, heads, window, fmap_size=fmap)
    else:
        m = ShiftWindowAttention(dim, heads, window, math.ceil(window / 2), fmap)
    with torch.no_grad():
        m.relative_position_bias_table.normal_(0, 1.0)
    return m


def brute_force(m: LocalAttention, x: torch.Tensor) -> torch.Tensor:
    """Full attention over all pixels; pair (query, key) allowed iff both fall in the same window of the rolled,
    padded map and the same shift region, and the key is a real pixel."""
    B, H, W, C = x.shape
    w, s, heads, hc = m.window_size, m.shift_size, m.heads, m.head_dim
    Hp, Wp = H + (-H) % w, W + (-W) % w
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ry, rx = (ys - s) % Hp, (xs - s) % Wp  # position after rolling by −s
    win = (ry // w) * (Wp // w) + (rx // w)
    if s:
        region = ((ry >= Hp - w).long() + (ry >= Hp - s).long()) * 3 + ((rx >= Wp - w).long() + (rx >= Wp - s).long())
    else:
        region = torch.zeros_like(ry)
    win, region, ly, lx = win.flatten(), region.flatten(), (ry % w).flatten(), (rx % w).flatten()
    allowed = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :])
    idx = (ly[:, None] - ly[None, :] + w - 1) * (2 * w - 1) + (lx[:, None] - lx[None, :] + w - 1)
    bias = m.relative_position_bias_table[idx].permute(2, 0, 1)  # heads × N × N
    q, k, v = m.proj_qkv(x).reshape(B, H * W, 3, heads, hc).permute(2, 0, 3, 1, 4)
    attn = (q * m.scale) @ k.transpose(-1, -2) + bias
    attn = attn.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(B, H, W, C)
    return m.proj_out(out)


SHAPES = [(14, 14), (7, 7), (13, 17), (5, 9), (8, 8), (16, 10), (3, 3)]


@pytest.mark.parametrize("kind", ["L", "S"])
@pytest.mark.parametrize("fmap", [14, 13, 5])
def test_cached_layout_is_the_computed_one(kind, fmap):
    """The token orders and mask built once for ``fmap_size`` (constants for torch.compile's freezing) are what
    the forward computes for that size, padded or not; other sizes compute their own; the state_dict is unchanged."""
    m = make(kind, fmap=fmap).eval()
    assert (
        m.layout_gather.numel() == (math.ceil(fmap / 7) * 7) ** 2
        and m.layout_scatter.numel() == fmap * fmap
        and set(m.state_dict()) == set(make(kind, fmap=0).state_dict())
    )
    uncached = make(kind, fmap=fmap).eval()
    uncached.fmap_size = 0  # the forward then computes the layout every call
    for size in {fmap, fmap + 3}:
        x = torch.randn(2, size, size, 24)
        torch.testing.assert_close(m(x), uncached(x), atol=0, rtol=0)
        torch.testing.assert_close(m(x), brute_force(m, x), atol=1e-5, rtol=1e-5)
    if kind == "S" or fmap % 7:
        assert m.layout_mask is not None and m.layout_mask.shape == (math.ceil(fmap / 7) ** 2, 49, 49)
    else:
        assert m.layout_mask is None


@pytest.mark.parametrize("kind", ["L", "S"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_brute_force(kind, shape):
    m = make(kind).eval()
    x = torch.randn(2, *shape, 24)
    torch.testing.assert_close(m(x), brute_force(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["L", "S"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_reference_forward_and_grad(kind, shape):
    assert_fast_matches_reference(make(kind).eval(), torch.randn(2, *shape, 24))


def test_padding_content_does_not_leak():
    """Windows are independent even when padded: changing the pixels of the bottom-right (padded) window leaves
    every other window's output untouched."""
    m = make("L").eval()
    x = torch.randn(1, 10, 10, 24)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:, 7:] += 5.0  # only the bottom-right window (partly padding) changes
    y2 = m(x2)
    torch.testing.assert_close(y[:, :7], y2[:, :7])
    torch.testing.assert_close(y[:, :, :7], y2[:, :, :7])


def test_shift_is_ceil_half_window():
    m = ShiftWindowAttention(24, 3, 7, math.ceil(7 / 2), 14)
    assert m.shift_size == 4


def test_buffers_match_authors(dat_fixture):
    _, _, state, _ = dat_fixture
    for key, value in state.items():
        if key.endswith("relative_position_index"):
            assert torch.equal(relative_position_index(int(math.isqrt(value.shape[0]))), value), key
        if key.endswith("attn_mask"):
            n_windows, n, _ = value.shape
            w = math.isqrt(n)
            size = math.isqrt(n_windows) * w
            ours = window_attention_mask(size, size, w, math.ceil(w / 2))
            assert torch.equal(ours, value), key
    assert any(k.endswith("attn_mask") for k in state)


def test_mask_none_without_shift_or_padding():
    assert window_attention_mask(14, 14, 7, 0) is None
    assert window_attention_mask(14, 14, 7, 0, pad_bottom=3).shape == (4, 49, 49)
