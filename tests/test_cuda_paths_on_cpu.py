"""What the GPU checks cover, run on CPU where the same code runs (no GPU in CI): bf16 autocast through
both model families (the dtype handling of the position biases and masks that CUDA's bf16 runs take), finite and
close to fp32, with finite gradients for every parameter, the learnable biases included. (flex_attention's
neighborhood path against the reference on CPU: tests/test_layers_neighborhood.py.)"""

from __future__ import annotations

import pytest
import torch

from conftest import reduced_kwargs
from datvit.models import DAT


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_bf16_autocast_is_finite_and_close_to_fp32(family):
    torch.manual_seed(0)
    model = DAT(**reduced_kwargs(family, num_classes=10)).train()
    for m in model.modules():  # no stochastic depth: both passes see the same network
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    x = torch.randn(2, 3, 64, 64)
    fp32 = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x)
    assert torch.isfinite(bf16).all()
    # bf16 has 8 bits of mantissa: logits agree to a few percent of their spread
    assert (bf16.float() - fp32).abs().max() < 0.05 * fp32.abs().max() + 0.05
    bf16.float().logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    biases = [n for n in grads if n.endswith(("rpe_table", "rpb", "relative_position_bias_table"))]
    assert biases and all(grads[n].abs().sum() > 0 for n in biases)
