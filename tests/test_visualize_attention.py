"""The attention figure of ``datvit visualize``: captured weights, datvit.tools.collect_deformable_attention, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import datvit
from datvit.cli.main import main
from datvit.layers import DeformableAttention
from datvit.tools import collect_deformable_attention, parse_blocks


def _tiny_pp_kwargs(**kw):
    """A small DAT++ (every block kind of the released model; D blocks in all four stages)."""
    return {
        **datvit.model_config("datpp_tiny"),
        **dict(
            dims=[16, 32, 64, 128],
            dim_stem=16,
            depths=[2, 2, 2, 2],
            heads=[1, 2, 4, 8],
            groups=[1, 2, 2, 4],
            stage_spec=[["N", "D"]] * 3 + [["D", "D"]],
            num_classes=10,
            drop_path_rate=0.0,
        ),
        **kw,
    }


def _tiny_pp(**kw):
    torch.manual_seed(0)
    model = datvit.DAT(**_tiny_pp_kwargs(**kw)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformableAttention):
                m.conv_offset[-1].weight.normal_(std=0.3)  # move the keys off the reference grid
    return model


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_captured_weights_are_the_ones_the_block_uses(generation):
    """The block's output recomputed from the captured softmax equals its SDPA output (capture off)."""
    torch.manual_seed(1)
    block = DeformableAttention(
        32,
        4,
        2,
        8,
        stride=1 if generation == "v1" else 2,
        ksize=3,
        offset_range_factor=2.0 if generation == "v1" else -1,
        generation=generation,
    ).eval()
    with torch.no_grad():
        block.conv_offset[-1].weight.normal_(std=0.5)
        block.rpe_table.normal_(std=0.5)
    x = torch.randn(2, 8, 12, 32)
    with torch.no_grad():
        expected = block(x)
        assert block.captured_attention is None  # the SDPA path keeps nothing
        block.capture_attention = True
        captured_out, pos, _ = block(x, return_positions=True)
        block.capture_attention = False
    attn = block.captured_attention  # B×heads×HW×Ns
    B, G, hk, wk, _ = pos.shape
    assert attn.shape == (2, 4, 8 * 12, hk * wk)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 96))
    # recompute: sample x at the positions, v = proj_v, out = attn·v, proj_out
    x_groups = x.permute(0, 3, 1, 2).reshape(B * G, 16, 8, 12)
    sampled = F.grid_sample(x_groups, pos.reshape(B * G, hk, wk, 2).flip(-1), mode="bilinear", align_corners=True)
    v = block.proj_v(sampled.reshape(B, 32, hk, wk)).reshape(B, 4, 8, hk * wk).transpose(-2, -1)
    out = (attn @ v).transpose(1, 2).reshape(B, 8, 12, 32)
    recomputed = block.proj_out(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(recomputed, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured_out, expected, atol=1e-5, rtol=1e-5)


def test_collect_attention_api():
    model = _tiny_pp()
    image = torch.randn(3, 96, 128)
    logits, maps = collect_deformable_attention(model, image, [(10, 20), (95, 127)], return_logits=True)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(image[None]), atol=1e-5, rtol=1e-5)
    assert [(m.stage, m.block) for m in maps] == [(0, 1), (1, 1), (2, 1), (3, 0), (3, 1)]
    assert [m.map_size for m in maps] == [(24, 32), (12, 16), (6, 8), (3, 4), (3, 4)]
    for m in maps:
        G, hk, wk, _ = m.sampled.shape
        assert m.weights.shape == (2, G, hk * wk) and m.head_weights.shape == (2, m.heads, hk * wk)
        np.testing.assert_allclose(m.weights.sum(axis=(1, 2)), 1, atol=1e-5)
        np.testing.assert_allclose(m.received.sum(), 1, atol=1e-5)
        # the query cell covering pixel (y, x): (10, 20) → row 10·H/96, col 20·W/128; the last pixel → last cell
        assert m.query_cells[0].tolist() == [10 * m.map_size[0] // 96, 20 * m.map_size[1] // 128]
        assert m.query_cells[1].tolist() == [m.map_size[0] - 1, m.map_size[1] - 1]
        pts, w, groups = m.top_keys(0, 5)
        assert pts.shape == (5, 2) and np.all(np.diff(w) <= 0) and groups.max() < G
        assert model.stages[m.stage].attns[m.block].captured_attention is None  # the flag was reset
    assert not model.training and not model.reference

    with pytest.raises(ValueError, match=r"outside the 96×128 input image"):
        collect_deformable_attention(model, image, [(96, 0)])
    with pytest.raises(ValueError, match="too small"):
        collect_deformable_attention(model, torch.randn(3, 16, 16), [(1, 1)])


def test_top_queries_find_where_the_keys_go():
    """All keys pushed to the bottom-right corner (DAT++ clamps positions to [−1, 1]): the most attended query
    cell of every block is the bottom-right one, and every query's top keys lie in that corner."""
    model = _tiny_pp()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformableAttention):
                dw, ln, _, pw = m.conv_offset
                dw.weight.zero_()
                dw.bias.fill_(1.0)
                ln.norm.bias.fill_(1.0)  # LN of a constant map is its bias: offsets = GELU(1)·10 > 1
                pw.weight.fill_(10.0)
    maps = collect_deformable_attention(model, torch.randn(3, 64, 64), top_queries=2)
    for m in maps:
        h, w = m.map_size
        assert m.query_cells[0].tolist() == [h - 1, w - 1]
        pts, _, _ = m.top_keys(1, 3)
        np.testing.assert_allclose(pts, [[64 - 32 / w, 64 - 32 / h]] * 3, atol=1e-4)  # last cell's centre


def test_blocks_selection_and_errors():
    model = _tiny_pp(stage_spec=[["N", "N"], ["N", "D"], ["N", "D"], ["D", "D"]])
    assert parse_blocks("2,4.1", model) == [(1, 1), (3, 0)]
    with pytest.raises(ValueError, match="stage 1 has no deformable .D. blocks; the stages with D blocks are 2, 3, 4"):
        parse_blocks("1", model)
    with pytest.raises(ValueError, match="stage 3 block 1 is an N block; the D blocks of stage 3 are 2"):
        parse_blocks("3.1", model)
    with pytest.raises(ValueError, match="STAGE or STAGE.BLOCK"):
        parse_blocks("three", model)


def test_cli_attention_figures_and_errors(tmp_path, capsys):
    from datvit.models.factory import arch_record

    # a datvit checkpoint of a custom model: it records its architecture
    torch.save(
        {"model": _tiny_pp().state_dict(), "arch": arch_record("custom", _tiny_pp_kwargs())}, tmp_path / "pp.pth"
    )
    img = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)).save(img)
    common = ["visualize", "--checkpoint", str(tmp_path / "pp.pth"), "--image", str(img), "--img-size", "64"]

    out = tmp_path / "queries.png"
    assert main(common + ["--query", "10,20", "--query", "50,40", "--topk", "6", "--out", str(out)]) == 0
    assert "5 deformable block(s), queries" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 800
    assert main(common + ["--top-queries", "2", "--blocks", "4", "--out", str(tmp_path / "top.png")]) == 0
    assert "2 deformable block(s), queries" in capsys.readouterr().out
    assert main(common + ["--mode", "received", "--blocks", "3,4"]) == 0
    assert (tmp_path / "photo_dat_received.png").is_file()
    assert main(common + ["--blocks", "4.2"]) == 0  # the sampled-points figure, one block
    assert "wrote" in capsys.readouterr().out and (tmp_path / "photo_dat_points.png").is_file()
    capsys.readouterr()

    for extra, message in [
        (["--query", "64,3"], "outside the 64×64 input image"),
        (["--query", "3,3", "--blocks", "5"], "stage 5 has no deformable"),
        (["--query", "1,1", "--img-size", "16"], "img_size 16 is too small"),
        (["--mode", "queries"], "needs --query"),  # these two: before loading
        (["--query", "1,1", "--top-queries", "2"], "either --query or --top-queries"),
    ]:
        assert main(common + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
