"""What timm expects of a registered model, for each of datvit's eight variants: forward and backward, the default
cfg, ``features_only`` and ``forward_intermediates`` (every argument), ``prune_intermediate_layers``, torch.fx
(forward bit-identical to eager, backward), ``torch.jit.script``, fx then script, and scripted fx feature
extraction. Graphs that PyTorch runs compute what eager computes: every traced or scripted output here is
compared with eager bit for bit.

Each variant is built at a test size: its own dims, heads, groups, windows and generation, at most two blocks
per stage (the first two of its stage spec, so every block kind of the variant runs) and 64×64 inputs.
"""

import warnings

import pytest
import timm
import torch
from timm.models import FeatureGraphNet

from conftest import VARIANTS, assert_scripted_equals_eager
from datvit.models import DAT
from datvit.models.registry import model_config

SIZE = 64


def _test_size(name: str) -> dict:
    """Construction arguments of ``name`` at the test size (see the module docstring)."""
    spec = [list(s)[:2] for s in model_config(name)["stage_spec"]]
    return dict(img_size=SIZE, depths=[len(s) for s in spec], stage_spec=spec)


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **_test_size(name), **kwargs)


def image(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))


def _scripted(module: torch.nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated upstream, still what timm tests
        return torch.jit.script(module)


def _all_parameters_have_gradients(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    """(name, model in eval mode): one variant alive at a time (pytest groups the tests by this fixture)."""
    return request.param, build(request.param).eval()


def test_forward_and_grad_checkpointing(variant):
    name, model = variant
    x = image()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000) and not out.isnan().any()
        model.set_grad_checkpointing(True)
        try:
            assert torch.equal(model(x), out)
        finally:
            model.set_grad_checkpointing(False)


def test_backward(variant):
    name, _ = variant
    model = build(name, num_classes=7).train()
    out = model(image(2))
    assert out.shape == (2, 7) and not out.isnan().any()
    out.mean().backward()
    _all_parameters_have_gradients(model)


def test_default_cfg(variant):
    name, model = variant
    cfg = model.pretrained_cfg
    assert cfg["pool_size"] == tuple(s // 32 for s in cfg["input_size"][1:])
    assert cfg["min_input_size"][1] <= SIZE and not cfg["fixed_input_size"]
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert model.num_classes == cfg["num_classes"] and model.num_features == model.head_hidden_size > 0
    x = image()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, SIZE // 32, SIZE // 32)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        headless = build(name).eval()
        headless.reset_classifier(0)
        assert headless.num_classes == 0 and torch.equal(headless(x), pre_logits)
        headless.reset_classifier(0, "")  # no pooling either: the unpooled map
        assert torch.equal(headless(x), features)
        built_headless = build(name, num_classes=0, global_pool="").eval()
        built_headless.load_state_dict(model.state_dict(), strict=False)  # no head: other random draws
        assert torch.equal(built_headless(x), features)


def test_features_only_and_forward_intermediates(variant):
    """``features_only`` ('getter') returns ``forward_intermediates``' stage maps; every argument of
    ``forward_intermediates`` selects from, or reformats, the same maps."""
    name, _ = variant
    net = build(name, features_only=True).eval()
    (model,) = [m for m in net.modules() if isinstance(m, DAT)]
    info = net.feature_info
    x = image()
    with torch.no_grad():
        features = net(x)
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(features) == len(maps) == 4
        for f, m, channels, reduction in zip(features, maps, info.channels(), info.reduction()):
            assert torch.equal(f, m) and f.shape == (1, channels, SIZE // reduction, SIZE // reduction)
        for indices, taken, stop_early in ((2, [2, 3], False), ([0, 2], [0, 2], True), ([-1], [3], False)):
            out = model.forward_intermediates(x, indices=indices, stop_early=stop_early, intermediates_only=True)
            assert len(out) == len(taken) and all(torch.equal(o, maps[i]) for o, i in zip(out, taken))
        _, nhwc = model.forward_intermediates(x, indices=[1, 3], output_fmt="NHWC", norm=True)
        assert all(torch.equal(o, maps[i].permute(0, 2, 3, 1)) for o, i in zip(nhwc, [1, 3]))
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NLC")


def test_prune_intermediate_layers(variant):
    name, _ = variant
    model = build(name, features_only=True).eval()
    (model,) = [m for m in model.modules() if isinstance(m, DAT)]
    x = image()
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        assert model.prune_intermediate_layers([0, 2]) == [0, 2]
        assert len(model.stages) == 3 and model.num_classes == 0
        final, kept = model.forward_intermediates(x, indices=[0, 2])
    assert torch.equal(kept[0], maps[0]) and torch.equal(kept[1], maps[2])
    assert final.shape == (1, model.dims[2], SIZE // 16, SIZE // 16)


def test_fx_forward_is_eager_and_backward_reaches_every_parameter(variant):
    name, model = variant
    x = image()
    graph = torch.fx.symbolic_trace(model)
    with torch.inference_mode():
        assert torch.equal(graph(x), model(x))
    trainable = build(name, num_classes=7).train()
    out = torch.fx.symbolic_trace(trainable)(image(2))
    assert out.shape == (2, 7)
    out.mean().backward()
    _all_parameters_have_gradients(trainable)


def test_torchscript_fx_then_script_and_scripted_fx_features_are_eager(variant):
    """``torch.jit.script`` of the model, of its fx graph, and of timm's fx feature extraction
    (``FeatureGraphNet``: the raw stage outputs, channels-last) return what eager returns."""
    _, model = variant
    scripted, scripted_graph = _scripted(model), _scripted(torch.fx.symbolic_trace(model))
    scripted_features = _scripted(FeatureGraphNet(model, out_indices=(0, 1, 2, 3)))
    x = image()
    with torch.inference_mode():
        out = model(x)
        assert_scripted_equals_eager(scripted(x), out)
        assert_scripted_equals_eager(scripted_graph(x), out)
        _, expected = model.forward_intermediates(x, output_fmt="NHWC")
        got = scripted_features(x)
    assert isinstance(got, list) and len(got) == 4
    for g, e in zip(got, expected):
        assert_scripted_equals_eager(g, e)
