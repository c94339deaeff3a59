"""``datvit.optimize_for_inference``: torch.compile with inductor freezing gives eager's outputs (1e-4) on a tiny DAT
(one L and one D block per stage); the options are validated; the CLI flag helper."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch

import datvit
import datvit.cli._deploy_args
from datvit.cli._deploy_args import add_inference_optimization_arguments, optimize_from_args
from datvit.deploy import InferenceOptimization, optimize_for_inference
from train_helpers import TINY_MODEL_KWARGS


@pytest.mark.timeout(600)
def test_compiled_with_freezing_matches_eager():
    """The compile is the slow part (~1 min on 2 idle cores): the smallest model with both attention kinds."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    kwargs = dict(TINY_MODEL_KWARGS, depths=[1, 1, 1, 1], stage_spec=[["L"], ["L"], ["D"], ["D"]])
    model = timm.create_model("dat_tiny", num_classes=5, **kwargs)
    with torch.no_grad():  # offsets that move: the deformable sampling is exercised
        for m in model.modules():
            if isinstance(m, datvit.layers.DeformableAttention):
                m.conv_offset[3].weight.normal_(0, 0.5)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model)
    assert fast.optimization.freezing and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(fast(x), expected, atol=1e-4, rtol=1e-4)


def test_options_are_checked():
    with pytest.raises(ValueError, match="compile mode"):
        InferenceOptimization(mode="fastest")
    with pytest.raises(ValueError, match="freezing needs compile"):
        InferenceOptimization(compile=False)
    eager = optimize_for_inference(torch.nn.Linear(2, 2).train(), compile=False, freezing=False)
    assert not eager.original.training


def test_flag_helper():
    p = argparse.ArgumentParser()
    add_inference_optimization_arguments(p)
    model = torch.nn.Linear(2, 2)
    assert optimize_from_args(model, p.parse_args([])) is model
    args = p.parse_args(["--compile", "--compile-mode", "max-autotune"])
    assert args.compile and args.compile_mode == "max-autotune"


def test_int8_quantizes_every_linear_and_stays_close():
    """torchao's int8 (eager here; compiled it is the same arithmetic in int8 GEMMs): every Linear's weight is
    quantized, the logits move little and the predicted classes of a trained-like model hold."""
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    kwargs = dict(TINY_MODEL_KWARGS, depths=[1, 1, 1, 1], stage_spec=[["L"], ["L"], ["D"], ["D"]])
    model = timm.create_model("dat_tiny", num_classes=5, **kwargs).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    int8 = optimize_for_inference(model, compile=False, freezing=False, quantize="int8")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(
        type(m.weight).__name__ != "Parameter" or type(m.weight.data) is not torch.Tensor for m in linears
    )
    got = int8(x)
    scale = expected.abs().max()
    assert (got - expected).abs().max() < 0.05 * scale
    assert not torch.equal(got, expected)  # it did quantize


def test_int8_options_and_flag():
    with pytest.raises(ValueError, match="quantize must be one of"):
        InferenceOptimization(quantize="int4")
    p = argparse.ArgumentParser()
    add_inference_optimization_arguments(p)
    args = p.parse_args(["--int8"])
    assert args.int8 and not args.compile


def _tiny_dat():
    torch.manual_seed(0)
    kwargs = dict(TINY_MODEL_KWARGS, depths=[1, 1, 1, 1], stage_spec=[["L"], ["L"], ["D"], ["D"]])
    return timm.create_model("dat_tiny", num_classes=5, **kwargs).eval()


@pytest.mark.skipif(not datvit.layers.ops.cpu_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_inference_runs_under_autocast_and_returns_float32():
    model = _tiny_dat()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    seen = []
    model.get_classifier().register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
    )
    fast = optimize_for_inference(model, compile=False, freezing=False, dtype="bfloat16")
    got = fast(x)
    assert seen == [(True, torch.bfloat16)]  # the model ran under bf16 autocast
    assert got.dtype == torch.float32 and not torch.equal(got, expected)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max() + 0.05
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights are not converted


def test_bf16_options_flag_and_refusal(monkeypatch):
    with pytest.raises(ValueError, match="dtype must be one of"):
        InferenceOptimization(dtype="float16")
    with pytest.raises(ValueError, match="alternatives"):
        InferenceOptimization(dtype="bfloat16", quantize="int8")
    p = argparse.ArgumentParser()
    add_inference_optimization_arguments(p)
    assert p.parse_args(["--amp"]).amp and not p.parse_args([]).amp
    calls = []
    monkeypatch.setattr(
        datvit.cli._deploy_args, "optimize_for_inference", lambda model, opt: calls.append(opt) or model
    )
    optimize_from_args(torch.nn.Linear(2, 2), p.parse_args(["--amp"]))
    assert calls == [
        InferenceOptimization(compile=False, freezing=False, mode="default", quantize=None, dtype="bfloat16")
    ]
    monkeypatch.undo()
    monkeypatch.setattr(datvit.deploy, "cpu_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        optimize_for_inference(torch.nn.Linear(2, 2), compile=False, freezing=False, dtype="bfloat16")


def test_an_unset_dtype_keeps_the_callers_autocast():
    """`datvit eval --amp --compile`: eval autocasts around the optimized model, which must not switch it off."""
    model = torch.nn.Linear(4, 4)
    fast = optimize_for_inference(model, compile=False, freezing=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(2, 4)).dtype == torch.bfloat16


def test_low_precision_compiles_without_inductors_layout_optimisation():
    """In bf16 (the option, or a caller's autocast) the model runs with inductor's layout optimisation off: it
    made DAT++'s attention weights heads-innermost (compiled 0.94× eager, 1.2× without); float32 keeps it."""
    seen = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            seen.append(torch._inductor.config.layout_optimization)
            return super().forward(x)

    x = torch.randn(2, 4)
    optimize_for_inference(Probe(4, 4), compile=False, freezing=False)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        optimize_for_inference(Probe(4, 4), compile=False, freezing=False)(x)
    assert seen == [True, False]
    if datvit.layers.ops.cpu_native_bf16():
        optimize_for_inference(Probe(4, 4), compile=False, freezing=False, dtype="bfloat16")(x)
        assert seen[-1] is False
