"""timm model API, input sizes and input validation, forward/backward of every variant, torch.compile."""

from __future__ import annotations

import pytest
import timm
import torch

import datvit
from conftest import VARIANTS, reduced_kwargs
from datvit.models import DAT


def small(family: str, **kw) -> DAT:
    torch.manual_seed(0)
    return DAT(**reduced_kwargs(family, num_classes=10, **kw))


def test_registered_in_timm():
    for name in VARIANTS:
        assert name in timm.list_models("dat*"), name
    assert datvit.list_models() == VARIANTS


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_timm_api(family):
    m = small(family).eval()
    x = torch.randn(2, 3, 64, 64)
    logits = m(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    feats = m.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 128)
    torch.testing.assert_close(m.forward_head(feats), logits)
    m.reset_classifier(5)
    assert m(x).shape == (2, 5) and m.get_classifier().out_features == 5
    m.reset_classifier(0)
    assert m(x).shape == (2, 128)
    nwd = m.no_weight_decay()
    assert nwd and all(n.endswith(("relative_position_bias_table", "rpe_table", "rpb")) for n in nwd)
    assert {n for n, _ in m.named_parameters() if n.endswith("rpe_table")} <= nwd
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    final, inter = m.forward_intermediates(x)
    assert [t.shape[1:] for t in inter] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    torch.testing.assert_close(final, feats)
    assert len(m.forward_intermediates(x, indices=[1], intermediates_only=True)) == 1


def test_pretrained_cfg():
    m = timm.create_model("dat_tiny", num_classes=3)
    cfg = m.pretrained_cfg
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["classifier"] == "cls_head"
    assert timm.data.resolve_data_config({}, model=m)["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_features_only_four_normed_maps(family):
    kwargs = reduced_kwargs(family)
    name = "dat_tiny" if family == "dat" else "datpp_tiny"
    feat = timm.create_model(name, features_only=True, **kwargs)
    maps = feat(torch.randn(1, 3, 96, 64))
    assert [tuple(t.shape[1:]) for t in maps] == [(16, 24, 16), (32, 12, 8), (64, 6, 4), (128, 3, 2)]
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    assert feat.feature_info.channels() == [16, 32, 64, 128]
    # each map went through its own LayerNorm (init weight 1, bias 0 → zero mean, unit variance per pixel)
    for t in maps:
        torch.testing.assert_close(t.mean(1), torch.zeros_like(t.mean(1)), atol=1e-5, rtol=0)
    assert "norms.3.norm.weight" in feat.state_dict() or "model.norms.3.norm.weight" in feat.state_dict()
    two = timm.create_model(name, features_only=True, out_indices=(2, 3), **kwargs)
    assert [t.shape[1] for t in two(torch.randn(1, 3, 64, 64))] == [64, 128]


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_positions_for_visualisation(family):
    m = small(family).eval()
    logits, positions = m.forward_with_positions(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and len(positions) == 4
    d_blocks = [(s, b) for s, stage in enumerate(m.stages) for b, kind in enumerate(stage.stage_spec) if kind == "D"]
    for s, b in d_blocks:
        pos, ref = positions[s][b]
        groups = m.stages[s].attns[b].groups
        assert pos.shape[:2] == (2, groups) and pos.shape[-1] == 2 and ref.shape == pos.shape
    for s, stage in enumerate(m.stages):
        for b, kind in enumerate(stage.stage_spec):
            if kind != "D":
                assert positions[s][b] is None


@pytest.mark.parametrize("family", ["dat", "datpp"])
@pytest.mark.parametrize("size", [(64, 64), (224, 160), (100, 132), (32, 32), (33, 47)])
def test_any_input_size_fast_matches_reference(family, size):
    m = small(family).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = m(x)
        y_ref = m.set_reference(True)(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)


def test_patch2_stem_runs_at_16():
    m = DAT(**reduced_kwargs("dat", num_classes=10, patch_size=2, img_size=32, window_sizes=[4, 4, 4, 2]))
    assert m.min_input_size == 16
    assert torch.isfinite(m(torch.randn(2, 3, 16, 16))).all()


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_bad_input_gives_clear_errors(family):
    m = small(family)
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="too small.*at least 32"):
        m(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="floating"):
        m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_bad_config_gives_clear_errors():
    with pytest.raises(ValueError, match="stages"):
        DAT(dims=(16, 32, 64, 128), depths=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown block kind"):
        DAT(**reduced_kwargs("dat", stage_spec=[["L", "X"], ["L", "S"], ["L", "D"], ["L", "D"]]))
    with pytest.raises(ValueError, match="letters"):
        DAT(**reduced_kwargs("dat", stage_spec=[["L"], ["L", "S"], ["L", "D"], ["L", "D"]]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_forward_backward(variant):
    m = timm.create_model(variant, num_classes=7)
    size = 384 if variant.endswith("384") else 224
    y = m(torch.randn(1, 3, size, size))
    assert y.shape == (1, 7) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad), variant


def test_grad_checkpointing_same_gradients():
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        m = small("datpp")
        m.set_grad_checkpointing(ckpt)
        m.train()
        m(x).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "family,spec", [("dat", [["S"], ["L"], ["D"], ["D"]]), ("datpp", [["N"], ["D"], ["N"], ["D"]])]
)
def test_torch_compile_fullgraph_matches_eager(family, spec):
    torch._dynamo.reset()
    m = DAT(**reduced_kwargs(family, num_classes=10, depths=[1, 1, 1, 1], stage_spec=spec)).eval()
    x = torch.randn(2, 3, 64, 96)
    compiled = torch.compile(m, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)
