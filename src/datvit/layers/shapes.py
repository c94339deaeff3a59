"""Sizes as symbols: how the layers' size arithmetic is written while ``torch.export`` traces a graph whose height
and width are dynamic.

Eager, compiled, fx-traced and scripted calls — and exports at a fixed size — see Python ints and branch on them
freely: the window padding is zero or not, a key grid has one row or more, a map is small enough for one
neighborhood tile. A graph exported with a symbolic H×W (``torch.export.Dim``) must hold for every size at once,
and a Python branch on a symbolic size either fixes that size ("Constraints violated (height, width)") or adds a
guard that narrows the range. So each size-dependent layer function asks :func:`symbolic_sizes` first and, while
sizes are symbols, takes a branch-free formulation computed in the graph (the mask is always built, divisors are
``torch.sym_max``, one tiling serves every size); the ints-only code below it is what every other mode runs,
unchanged. The symbolic branches are Python-only: TorchScript drops them (``torch.jit.is_scripting()``).
"""

import torch


def symbolic_sizes(height: int, width: int) -> bool:
    """Whether ``height`` or ``width`` is a symbolic size (``torch.SymInt``) of a graph being exported: the caller
    then takes its branch-free formulation. False for Python ints, in TorchScript, and under torch.compile (whose
    dynamic shapes guard and recompile, as the fast paths expect)."""
    if torch.jit.is_scripting():
        return False
    else:  # the branch TorchScript drops
        return _python_symbolic_sizes(height, width)


@torch.jit.unused
def _python_symbolic_sizes(height, width) -> bool:
    if not torch.compiler.is_exporting():
        return False
    return isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt)


def ceil_div(n: int, d: int) -> int:
    """⌈n / d⌉ for n ≥ 0, d > 0, written so that symbolic n keeps ``ceil_div(n, d) * d // d == ceil_div(n, d)``
    provable (``n + (−n) % d`` padded sizes do not let the shape solver divide them by d again)."""
    return (n + d - 1) // d


def conv_input(x: torch.Tensor) -> torch.Tensor:
    """``x.permute(0, 3, 1, 2)`` of a channels-last B×H×W×C map, the input of a convolution; copied to contiguous
    NCHW while exporting with symbolic sizes. The fake convolution of ``torch.export`` gives a channels-last input's
    output channels-last strides, and ordering those strides guards on every side being > 1, which a stage-4 map
    of an input at the model's minimum size is not ("Constraints violated": min 2× the minimum). A contiguous input
    has contiguous output strides, which need no guard; exported to ONNX the copy is nothing (ONNX has no
    strides)."""
    x = x.permute(0, 3, 1, 2)
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if _symbolic_map(x, 2):
            x = x.clone(memory_format=torch.contiguous_format)
    return x


def conv_input_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B×H×W×C) itself, or — exporting with symbolic sizes — a copy whose NCHW permutation is contiguous,
    for kernels that permute it to NCHW themselves before a convolution (``ops.residual_depthwise_conv``); see
    :func:`conv_input`."""
    if not torch.jit.is_scripting():  # folded by TorchScript: sizes are ints there
        if _symbolic_map(x, 1):
            x = x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).permute(0, 2, 3, 1)
    return x


@torch.jit.unused
def _symbolic_map(x: torch.Tensor, first: int) -> bool:
    """Whether ``x``'s sides (dims ``first``, ``first`` + 1) are symbolic in an export; asks for the sizes only
    while exporting (under torch.fx they would be recorded as graph nodes)."""
    return torch.compiler.is_exporting() and symbolic_sizes(x.shape[first], x.shape[first + 1])
