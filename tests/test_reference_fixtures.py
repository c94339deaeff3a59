"""The authors' outputs on seeded weights (tests/reference/fixture_*): every stage and the logits, on the plain
reference path (~1e-5) and the fast path (1e-4), float32. A mismatch names the stage."""

from __future__ import annotations

import pytest
import torch

import datvit
from conftest import load_fixture


@pytest.mark.parametrize("family", ["dat", "datpp"])
@pytest.mark.parametrize("reference", [True, False], ids=["reference", "fast"])
def test_fixture_stages_and_logits(family, reference):
    config, generation, state, tensors = load_fixture(family)
    model = datvit.from_authors_config(config, reference=reference).eval()
    assert model.generation == generation
    model.load_state_dict(state, strict=True)
    x = tensors["__input__"]
    with torch.no_grad():
        logits, stages = model.forward_intermediates(x)
        logits = model.forward_head(logits)
    for i, out in enumerate(stages):
        expected = tensors[f"__stage{i}__"]
        err = (out - expected).abs().max().item()
        assert err < 1e-4, f"{family} stage {i}: max abs error {err:.2e} (scale {expected.abs().max():.1f})"
    err = (logits - tensors["__logits__"]).abs().max().item()
    assert err < (1e-5 if reference else 1e-4), f"{family} logits: max abs error {err:.2e}"
    assert torch.equal(model(x).argmax(-1), tensors["__logits__"].argmax(-1))


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_fast_path_matches_reference_path_gradients(family):
    config, _, state, tensors = load_fixture(family)
    x = tensors["__input__"][:1, :, :96, :128]  # a non-square crop keeps this quick
    grads = []
    for reference in (True, False):
        model = datvit.from_authors_config(config, reference=reference)
        model.load_state_dict(state)
        model.eval()
        model(x).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g_ref in grads[0].items():
        g_fast = grads[1][name]
        scale = max(1.0, g_ref.abs().max().item())
        assert (g_fast - g_ref).abs().max().item() <= 1e-4 * scale, name
