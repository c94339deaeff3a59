"""The timm / torchvision tracing conventions: torch.fx symbolic tracing (plain, timm's features_only with
feature_cls='fx', torchvision's create_feature_extractor), torch.jit.script and torch.export with a dynamic batch,
for both families; every traced graph is run and compared with eager (fx and TorchScript graphs bit for bit)."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from conftest import assert_scripted_equals_eager, reduced_kwargs
from datvit.models import DAT

# One block of each kind per family (window sizes 7 on 16/8/4/2 maps: padded windows and the shifted mask).
SPECS = {"dat": [["S"], ["L"], ["D"], ["D"]], "datpp": [["N"], ["D"], ["N"], ["D"]]}
# (B, H, W): the traced size, and a non-square size whose maps are padded differently.
SIZES = [(2, 64, 64), (1, 48, 80)]


def small(family: str, **kw) -> DAT:
    torch.manual_seed(0)
    return DAT(**reduced_kwargs(family, num_classes=10, depths=[1, 1, 1, 1], stage_spec=SPECS[family], **kw)).eval()


def images(b: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h * w + b))


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_fx_symbolic_trace_matches_eager(family):
    m = small(family)
    gm = torch.fx.symbolic_trace(m)
    ops = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    # the size-dependent steps are single leaf calls, the rest is traced through
    assert any(getattr(t, "__name__", "") == "check_image_batch" for t in ops)
    assert any(n.op == "call_module" and n.target.startswith("stages.3.") for n in gm.graph.nodes)
    with torch.no_grad():
        for size in SIZES:
            x = images(*size)
            assert torch.equal(gm(x), m(x))  # the graph calls the fast-path kernels eager calls
    with pytest.raises(ValueError, match="too small"):
        gm(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_fx_feature_extractors_match_stage_outputs(family):
    """timm's FeatureGraphNet and torchvision's create_feature_extractor return the raw stage outputs
    (channels-last B×H×W×C, as timm's Swin; the 'getter' features add the per-stage norms and permute)."""
    name = "dat_tiny" if family == "dat" else "datpp_tiny"
    kwargs = reduced_kwargs(family, depths=[1, 1, 1, 1], stage_spec=SPECS[family])
    torch.manual_seed(0)
    fx_net = timm.create_model(name, features_only=True, feature_cls="fx", **kwargs).eval()
    plain = small(family)
    plain.load_state_dict(
        {k: v for k, v in fx_net.graph_module.state_dict().items() if not k.startswith("norms.")}, strict=False
    )
    tv_net = create_feature_extractor(plain, return_nodes={f"stages.{i}": f"s{i}" for i in range(4)})
    x = images(2, 64, 48)
    with torch.no_grad():
        _, expected = plain.forward_intermediates(x, output_fmt="NHWC")
        from_timm, from_tv = fx_net(x), tv_net(x)
    assert [f.shape[-1] for f in from_timm] == [16, 32, 64, 128]
    for i in range(4):
        assert torch.equal(from_timm[i], expected[i]) and torch.equal(from_tv[f"s{i}"], expected[i])


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_torch_jit_script_matches_eager(family, tmp_path):
    m = small(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated upstream, still what timm tests
        scripted = torch.jit.script(m)
    torch.jit.save(scripted, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    with torch.no_grad():
        for size in SIZES:
            x = images(*size)
            expected = m(x)
            # bit-identical alone in a process; to float32 rounding after other scripting (test_timm_contract)
            assert_scripted_equals_eager(scripted(x), expected)
            assert_scripted_equals_eager(loaded(x), expected)


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_torch_export_dynamic_batch(family):
    m = small(family)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(m, (images(2, 64, 64),), dynamic_shapes=({0: batch},))
    exported = program.module()
    with torch.no_grad():
        for b in (1, 3):
            x = images(b, 64, 64)
            torch.testing.assert_close(exported(x), m(x), atol=1e-5, rtol=1e-5)
