"""Gradient checkpointing recomputes activations in backward: the same loss and gradients, drop path included
(the recomputation replays the RNG)."""

from __future__ import annotations

import pytest
import torch

from datvit.models.factory import build_model, resolve_model_kwargs
from train_helpers import TINY_MODEL_KWARGS


def _grads(model, x, y, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("dat_tiny", {}),
        (
            "datpp_tiny",
            dict(
                dim_stem=16,
                dims=[16, 32, 64, 128],
                depths=[1, 1, 2, 1],
                heads=[1, 2, 4, 8],
                groups=[1, 1, 2, 4],
                window_sizes=[3, 3, 3, 3],
                nat_ksizes=[3, 3, 3, 3],
                img_size=32,
            ),
        ),
    ],
)
def test_grad_checkpointing_gives_the_same_gradients(name, overrides):
    kwargs = resolve_model_kwargs(name, None, overrides or TINY_MODEL_KWARGS, num_classes=5, drop_path_rate=0.3)
    torch.manual_seed(0)
    model = build_model(name, kwargs).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss_ref, ref = _grads(model, x, y, seed=11)
    model.set_grad_checkpointing(True)
    loss_ckpt, ckpt = _grads(model, x, y, seed=11)
    assert ref.keys() == ckpt.keys() and len(ref) == len(list(model.parameters()))
    assert torch.allclose(loss_ref, loss_ckpt, atol=1e-6)
    for n in ref:
        assert torch.allclose(ref[n], ckpt[n], atol=1e-6, rtol=1e-5), n
    # and drop path really was active: another seed changes the gradients
    _, other = _grads(model, x, y, seed=12)
    assert any(not torch.allclose(ref[n], other[n]) for n in ref)
