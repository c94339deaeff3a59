"""How a call is being run — eager, compiled, traced, scripted or exported — and what the layers do about it.

**The execution mode.** The layers' fast paths use kernels that only some ways of running a model can take: the
oneDNN 1×1-convolution projections and the ``embedding_bag`` sampling of the D block are eager-CPU kernels, the
opaque custom ops are for torch.compile, ``flex_attention`` is compiled on its own; graphs recorded for export
keep the plain ops (``F.linear``, ``F.grid_sample``) every exporter understands. A graph that PyTorch itself runs
(torch.fx, TorchScript) computes what eager computes: the fast-path kernels are leaves of fx graphs, and scripted
code takes the same kernels where TorchScript can call them. :func:`execution_mode` is the one
place that says which kind of call this is; every fast-path switch reads it, so changing what a mode runs
starts here. What each mode runs:

- ``EAGER_CPU``: the oneDNN projections (``ops.dense``; GELU fused in inference), ``embedding_bag`` sampling
  (``ops.sample_channels_last``), the explicit attention layouts in inference (``attention.biased_attention``);
- ``EAGER_OTHER``: the plain ops; ``flex_attention`` for the N blocks on CUDA;
- ``COMPILED``: the custom ops ``datvit::onednn_linear`` (CPU) and ``datvit::grid_sample_bilinear``, gathered
  sampling in inference;
- ``FX_TRACING``: none of the switches sees it in practice. The kernels that hold them (``ops.dense``,
  ``ops.dense_gelu``, ``ops.pointwise``, ``ops.residual_depthwise_conv``, ``ops.sample_channels_last``,
  ``ops.grid_sample_bilinear``, ``attention.biased_attention``, ``neighborhood_attention.neighborhood_attention``)
  are fx leaves (``torch.fx.wrap`` and timm's ``register_notrace_function``), so the graph calls them and they
  decide when the graph runs, as eager: a GraphModule's output is bit-identical to the module's. A switch reached
  while tracing anyway (a tracer without the wraps) takes the plain ops, the only ones it can record;
- ``EXPORTING``, ``JIT_TRACING``: the plain ops, for graphs run by other runtimes (ONNX, ExecuTorch); under
  ``JIT_TRACING`` the N blocks' ``flex_attention`` switch treats it as eager;
- ``SCRIPTED``: the switches on TorchScript's path are decided by what TorchScript can read (device, dtype,
  whether gradients are needed), and pick the eager kernels: a scripted model's output is bit-identical to the
  eager model's. Autocast is the exception: TorchScript does not read it, so a scripted model under CPU autocast
  takes the plain ops where eager casts for oneDNN.

**Export options.** What an exported graph is made of, where more than one formulation is correct, is chosen by
:func:`export_options` around the export call and read by the layer functions only under ``EXPORTING``
(:func:`export_sampling`): the D block's bilinear sampling and its position-bias interpolation are ONNX
``GridSample`` (``"grid-sample"``) or four gathers of a flattened table with explicit weights (``"gather"``, for
runtimes without ``GridSample`` or with a wrong one). Eager, compiled, scripted and fx graphs ignore them.

**Shape arithmetic under torch.fx.** Shape arithmetic that branches on sizes (window padding, the DAT++ grid
divisor ``max(n − 1, 1)``, the choice of neighborhood tiling) cannot be traced by ``torch.fx``, whose sizes are
``Proxy`` objects. Those steps live in free functions that each module registers with ``torch.fx.wrap`` (so any
``symbolic_trace``, torchvision's ``create_feature_extractor`` included, records them as one call) and with timm's
``register_notrace_function`` (timm's ``features_only=True, feature_cls='fx'``), the mechanism timm's Swin uses
for ``window_reverse``.
"""

import contextlib
import enum
from typing import Iterator, Optional

import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


class ExecutionMode(enum.Enum):
    """The kinds of call :func:`execution_mode` tells apart."""

    EAGER_CPU = "eager_cpu"  # plain Python execution on CPU tensors
    EAGER_OTHER = "eager_other"  # plain Python execution on another device (CUDA, meta, …)
    COMPILED = "compiled"  # dynamo tracing for torch.compile (inductor or another backend), not export
    FX_TRACING = "fx_tracing"  # torch.fx.symbolic_trace (timm's and torchvision's feature extractors)
    JIT_TRACING = "jit_tracing"  # torch.jit.trace
    SCRIPTED = "scripted"  # TorchScript code (torch.jit.script)
    EXPORTING = "exporting"  # torch.export, and the ONNX exporter built on it (dynamo=True)

    @property
    def is_eager(self) -> bool:
        """Plain Python execution, on any device: the eager-only kernels may run (where the device fits)."""
        return self in (ExecutionMode.EAGER_CPU, ExecutionMode.EAGER_OTHER)


def execution_mode(x: Optional[torch.Tensor] = None) -> ExecutionMode:
    """Which kind of call this is. ``x``, a tensor the call computes on, tells eager CPU from eager elsewhere
    (without it, the default device does).

    The questions are asked in a fixed order, since the flags overlap: torch.export (and the ONNX exporter) run
    under dynamo, so ``EXPORTING`` wins over ``COMPILED``; torch.fx and torch.jit tracing come before
    ``COMPILED`` too. Traceable by dynamo without a graph break (it folds every flag to a constant).

    TorchScript: called from scripted code this returns ``SCRIPTED`` (the function is scriptable; the rest is
    Python). The fast-path switches on TorchScript's path are guarded by a literal ``torch.jit.is_scripting()``
    check instead of a comparison with this result, because only the literal check makes TorchScript drop the
    branch at compile time: scripted graphs then carry no call to the Python-only fast paths at all. Inside such a
    guard the mode is never ``SCRIPTED``.
    """
    if torch.jit.is_scripting():
        return ExecutionMode.SCRIPTED
    else:  # the else branch is what TorchScript drops
        return _python_execution_mode(x)


@torch.jit.unused
def _python_execution_mode(x: Optional[torch.Tensor]) -> ExecutionMode:
    if torch.compiler.is_exporting():
        return ExecutionMode.EXPORTING
    if is_fx_symbolic_tracing():
        return ExecutionMode.FX_TRACING
    if torch.jit.is_tracing():
        return ExecutionMode.JIT_TRACING
    if torch.compiler.is_compiling():
        return ExecutionMode.COMPILED
    device = x.device if x is not None else torch.get_default_device()
    return ExecutionMode.EAGER_CPU if device.type == "cpu" else ExecutionMode.EAGER_OTHER


# -- export options -----------------------------------------------------------------------------------------------

SAMPLINGS = ("grid-sample", "gather")
DEFAULT_SAMPLING = "grid-sample"
_export_sampling = DEFAULT_SAMPLING


@contextlib.contextmanager
def export_options(sampling: Optional[str] = None) -> Iterator[None]:
    """Choose the formulations of graphs recorded for export inside the block (``torch.export`` and the ONNX
    exporter; see the module docstring). ``sampling``: ``"grid-sample"`` (ONNX ``GridSample``) or ``"gather"``
    (gathers and arithmetic) for the D block's sampling and position bias; None keeps the current choice.
    Restored on exit; eager, compiled, scripted and fx-traced calls never read it."""
    global _export_sampling
    if sampling is not None and sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    previous = _export_sampling
    if sampling is not None:
        _export_sampling = sampling
    try:
        yield
    finally:
        _export_sampling = previous


def export_sampling() -> str:
    """The sampling formulation :func:`export_options` chose: ``"grid-sample"`` or ``"gather"``."""
    return _export_sampling
