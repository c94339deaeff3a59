"""CPU (and GPU) inference deployment: :func:`optimize_for_inference` turns an eager model into what a deployment
would run — ``eval()``, no autograd, and ``torch.compile`` with inductor *freezing* (parameters become constants:
oneDNN/MKL weight pre-packing, constant folding of weight reshapes, fused epilogues) — optionally in bf16
(``dtype="bfloat16"``: autocast, the fastest CPU path where the CPU has native bf16; dat_tiny compiled 1.9× its
float32 eager speed) or with torchao's int8 (``quantize="int8"``).

Measured in ``datvit bench --modes compile`` (``compile_freeze`` rows) for dat_tiny, datpp_tiny, Swin-T and
ConvNeXt-T under the same treatment; see docs/benchmarks.md "Deployment". Compiling costs about a minute or more
for a tiny-sized model on 2 cores (a cold inductor cache); the compiled model then serves any batch size at the
example's image size without recompiling the first few sizes (``dynamic=None`` lets torch mark the batch dynamic
after the second size).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .layers.ops import cpu_native_bf16

COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
# None: float weights. "int8": torchao's int8 weights with int8 activations quantized per token at run time in
# every nn.Linear, DAT's 1×1-conv projections included (converted to nn.Linear first); other convolutions stay float
QUANTIZATIONS = (None, "int8")
# None: the model's own dtype. "bfloat16": bf16 autocast around the model (weights stay float32; GEMMs, convolutions
# and attention in bf16, norms and softmax inputs as autocast decides), outputs returned as float32
DTYPES = (None, "bfloat16")


@dataclass(frozen=True)
class InferenceOptimization:
    """What :func:`optimize_for_inference` does. ``compile``: torch.compile with inductor; ``freezing``: inductor's
    freezing pass (needs ``compile``; the parameters must not change afterwards); ``mode``: torch.compile mode
    (``max-autotune`` benchmarks GEMM/conv kernel choices at compile time: longer compile); ``dtype``: "bfloat16"
    runs the model under bf16 autocast (on CPU only with native bf16 kernels: AVX512-BF16 or AMX); ``quantize``:
    "int8" (torchao)."""

    compile: bool = True
    freezing: bool = True
    mode: str = "default"
    dynamic: Optional[bool] = None
    fullgraph: bool = False
    quantize: Optional[str] = None
    dtype: Optional[str] = None

    def __post_init__(self):
        if self.mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.mode!r}")
        if self.freezing and not self.compile:
            raise ValueError("freezing needs compile=True (it is an inductor pass)")
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize must be one of {', '.join(map(str, QUANTIZATIONS))}, got {self.quantize!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {self.dtype!r}")
        if self.dtype and self.quantize:
            raise ValueError(f"dtype={self.dtype!r} and quantize={self.quantize!r} are alternatives: choose one")


class InferenceModule(nn.Module):
    """The optimized model: calls the compiled module under ``torch.no_grad`` (freezing only applies to graphs
    traced without autograd). ``original`` is the eager model (same parameters)."""

    def __init__(
        self, original: nn.Module, compiled: nn.Module, optimization: InferenceOptimization, device_type: str = "cpu"
    ):
        super().__init__()
        self.original = original
        self._compiled = [compiled]  # a list: not registered as a second copy of the submodules
        self.optimization = optimization
        self.device_type = device_type

    def forward(self, *args: Any, **kwargs: Any):
        # torch.compile compiles lazily (first call, new shapes), and the freezing switch is read from inductor's
        # global config at that moment — `torch.compile(options={"freezing": True})` is silently ignored in
        # torch 2.14 (the weights stay graph inputs: no packed GEMMs). So the switch is set around every call.
        # dtype unset: no autocast context at all (an enabled=False one would switch off a caller's autocast, e.g.
        # `datvit eval --amp --compile`)
        dtype = self.optimization.dtype
        cast = torch.autocast(self.device_type, dtype=getattr(torch, dtype)) if dtype else contextlib.nullcontext()
        # In bf16 (ours, or a caller's autocast), inductor's layout optimisation — 4-D intermediates made
        # channels-last because the graph has convolutions — gave DAT++'s attention weights (B×heads×L×S) a
        # heads-innermost layout: scattered stores in the fused softmax, the whole model 0.94× eager instead of 1.2×
        # (Swin-T and ConvNeXt-T unchanged without it; float32 unaffected either way, so it stays on there).
        lowp = dtype is not None or torch.is_autocast_enabled(self.device_type)
        with (
            torch.no_grad(),
            cast,
            torch._inductor.config.patch(freezing=self.optimization.freezing, layout_optimization=not lowp),
        ):
            out = self._compiled[0](*args, **kwargs)
        return _float32_outputs(out) if dtype else out


def _float32_outputs(out: Any) -> Any:
    """Floating tensors (also inside tuples, lists and dicts) as float32: what autocast returned in bf16."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_float32_outputs(o) for o in out)
    if isinstance(out, dict):
        return {k: _float32_outputs(v) for k, v in out.items()}
    return out


def optimize_for_inference(
    model: nn.Module, optimization: Optional[InferenceOptimization] = None, **kwargs: Any
) -> nn.Module:
    """``model`` ready for inference: ``eval()``, parameters without gradients, and (by default) ``torch.compile``
    with inductor freezing. Keyword arguments build an :class:`InferenceOptimization` (``compile``, ``freezing``,
    ``mode``, ``dynamic``, ``fullgraph``, ``dtype``, ``quantize``). The first call compiles (slow); float32 outputs
    equal eager within float rounding (test: 1e-4); ``dtype="bfloat16"`` runs under bf16 autocast (float32 outputs,
    bf16 accuracy). Works for any ``nn.Module`` — timm's models get the same treatment.

    >>> fast = datvit.optimize_for_inference(timm.create_model("dat_tiny"))
    >>> logits = fast(images)                         # first call compiles
    >>> faster = datvit.optimize_for_inference(model, dtype="bfloat16")   # CPUs with AVX512-BF16/AMX, GPUs
    """
    opt = optimization or InferenceOptimization(**kwargs)
    device_type = next(iter(model.parameters()), torch.empty(0)).device.type
    if opt.dtype == "bfloat16" and device_type == "cpu" and not cpu_native_bf16():
        raise ValueError(
            "bf16 inference needs a CPU with native bf16 kernels (AVX512-BF16 or AMX); this one "
            "would emulate bf16 and run several times slower than float32: leave out --amp / dtype"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if opt.quantize == "int8":
        quantize_int8(model)
    if not opt.compile:
        return InferenceModule(model, model, opt, device_type)
    mode = None if opt.mode == "default" else opt.mode
    # int8 compiled with a symbolic batch (what dynamo switches to once a second batch size is seen, e.g. a
    # partial last batch) compiled for ~10 minutes and ran at 0.8x fp32 for dat_tiny: int8 compiles each batch
    # size statically unless dynamic is given
    dynamic = opt.dynamic if opt.dynamic is not None or opt.quantize is None else False
    compiled = torch.compile(model, mode=mode, dynamic=dynamic, fullgraph=opt.fullgraph)
    return InferenceModule(model, compiled, opt, device_type)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize ``model`` in place with torchao (``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``):
    every ``nn.Linear`` gets int8 weights (per channel) and quantizes its input per token at run time. Modules with
    ``use_linear_projections`` (DAT's D blocks and DAT++'s ConvMlp: 1×1 convolutions in the checkpoints) are
    converted to ``nn.Linear`` first, so their GEMMs are quantized too (the model's reference path is then
    unavailable). Fastest
    compiled (``optimize_for_inference(model, quantize="int8")``): inductor then runs int8 GEMMs (VNNI).
    Needs ``pip install 'datvit[int8]'`` (torchao)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:
        raise RuntimeError(
            "int8 quantization needs torchao: pip install 'datvit[int8]' (or pip install torchao)"
        ) from e
    # DAT's 1×1-conv projections (D blocks, DAT++'s ConvMlp) become nn.Linear first, so that they are quantized too
    for module in list(model.modules()):
        convert = getattr(module, "use_linear_projections", None)
        if callable(convert):
            convert()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model
