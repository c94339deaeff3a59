"""The fast paths' kernels on channels-last tokens (B×H×W×C): token projections, the depthwise residual
convolution, and bilinear sampling. Each picks its kernel from the execution mode (``layers/tracing.py``) and is
the plain PyTorch op wherever a faster kernel does not apply."""

from typing import List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .tracing import ExecutionMode, execution_mode, export_sampling


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# -- the fast paths' matrix multiply -----------------------------------------------------------------------------
#
# On CPU, PyTorch sends ``F.linear`` to MKL's sgemm, and its convolutions to oneDNN, whose fp32 kernels run at about
# twice MKL's rate on AVX-512 CPUs: the same token projection run as a 1×1 convolution on a channels-last view of the
# tokens is 1.3–2.2× faster, forward and backward (``datvit bench levers linear``). No copy is
# made: (..., C) tokens are a 1×C×M×1 map in channels-last strides, and the output comes back in the same layout.
# Eager mode calls the convolution directly; torch.compile sees the opaque custom ops below (inductor cannot reorder
# the view's strides). In bf16 (CPUs with native bf16) the convolution also beats F.linear, whose addmm copies the
# broadcast bias into the output first; compiled bf16 keeps F.linear, which inductor's freezing packs for oneDNN
# itself.


def _token_map(x2d: torch.Tensor) -> torch.Tensor:
    """M×C tokens as a 1×C×M×1 map with channels-last strides (a view of contiguous tokens)."""
    return x2d.reshape(1, x2d.shape[0], 1, x2d.shape[1]).permute(0, 3, 1, 2)


def _map_tokens(y: torch.Tensor) -> torch.Tensor:
    """1×C×M×1 channels-last map → M×C tokens (a view)."""
    return y.permute(0, 2, 3, 1).reshape(y.shape[2], y.shape[1])


def _conv_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """M×C_in tokens → M×C_out through oneDNN's 1×1 convolution."""
    return _map_tokens(F.conv2d(_token_map(x2d), weight[:, :, None, None], bias))


# Under torch.compile the 1×1 convolution goes through these opaque custom ops on 2-D tokens. Inlined, inductor
# may give the view's size-1 dimensions stride 0 (with dynamic shapes it does); oneDNN then no longer recognises
# the map as channels-last, computes in NCHW and returns a layout the compiled graph does not expect.


@torch.library.custom_op("datvit::onednn_linear", mutates_args=())
def _onednn_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _conv_linear(x.contiguous(), weight, bias)


@_onednn_linear_op.register_fake
def _onednn_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("datvit::onednn_linear_backward", mutates_args=())
def _onednn_linear_backward_op(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad, x = grad.contiguous(), x.contiguous()
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        _token_map(grad),
        _token_map(x),
        weight[:, :, None, None],
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        False,
        [0, 0],
        1,
        [True, True, False],
    )
    return _map_tokens(grad_x), grad_w.flatten(1)


@_onednn_linear_backward_op.register_fake
def _onednn_linear_backward_shape(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _onednn_linear_setup(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _onednn_linear_backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    grad_x, grad_w = _onednn_linear_backward_op(grad, x, weight)
    grad_b = grad.sum(0) if ctx.has_bias and need_b else None
    return (grad_x if need_x else None), (grad_w if need_w else None), grad_b


_onednn_linear_op.register_autograd(_onednn_linear_backward, setup_context=_onednn_linear_setup)


_FLOATS = (torch.float32, torch.bfloat16)
# whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX; without them bf16 is emulated). Read once
# here: torch.compile cannot trace the query (a graph break in every projection)
_NATIVE_BF16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively in oneDNN (AVX512-BF16 or AMX): where bf16 inference pays."""
    return _NATIVE_BF16


@torch.jit.unused
def _onednn_operands(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """(x, weight, bias, compiled) in the dtype the oneDNN 1×1 convolution runs in, or None where it does not
    apply (see ``_onednn_linear``); ``compiled`` says the call is traced by torch.compile."""
    mode = execution_mode(x)
    if not (mode is ExecutionMode.EAGER_CPU or mode is ExecutionMode.COMPILED):
        return None
    # compiled graphs run on any device: the oneDNN convolution is for CPU tensors
    if not (
        x.device.type == "cpu"
        and type(weight) in (torch.Tensor, nn.Parameter)
        and type(x) in (torch.Tensor, nn.Parameter)
        and x.numel() > 0
    ):
        return None
    compiled = mode is ExecutionMode.COMPILED
    if torch.is_autocast_enabled("cpu"):
        # the casts autocast would make for F.linear; the convolution then sees bf16 only
        dtype = torch.get_autocast_dtype("cpu")
        if (
            compiled
            or dtype != torch.bfloat16
            or not _NATIVE_BF16
            or x.dtype not in _FLOATS
            or weight.dtype not in _FLOATS
        ):
            return None
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    elif not (
        x.dtype == weight.dtype
        and (bias is None or bias.dtype == x.dtype)
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _NATIVE_BF16 and not compiled))
    ):
        return None
    return x, weight, bias, compiled


@torch.jit.unused
def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The 1×1-convolution form, or None where it does not apply. It applies on CPU to plain tensors in float32
    (eager and torch.compile) and in bf16 — a bf16 model or bf16 autocast — in eager mode on CPUs with native bf16
    (oneDNN's bf16 convolution fuses the bias that ``addmm`` copies into its output: 1.1–1.2×). Not while a graph
    is recorded for export (fx, jit.trace, torch.export: their graphs keep a ``linear``), not for tensor subclasses
    (torchao's int8 weights), not in bf16 under torch.compile: inductor's freezing packs a visible bf16 ``linear``
    for oneDNN itself, with fused epilogues (the custom op runs at 0.88× that)."""
    operands = _onednn_operands(x, weight, bias)
    if operands is None:
        return None
    x, weight, bias, compiled = operands
    c_in = x.shape[-1]
    if compiled:
        y = _onednn_linear_op(x.reshape(-1, c_in), weight, bias)
    else:
        y = _conv_linear(x.reshape(-1, c_in), weight, bias)
    return y.reshape(x.shape[:-1] + (weight.shape[0],))


# GELU fused into the projection as oneDNN's post-op (``mkldnn::_convolution_pointwise``, the op inductor's freezing
# emits): in eager inference the activation then costs no pass of its own over the hidden map (4× the tokens' size).
# No autograd formula exists for it, so anything that needs gradients takes the unfused path.
def _pointwise_conv_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise.default if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):  # a build without it
        return None


_POINTWISE_CONV = _pointwise_conv_op()


# -- the same kernels in TorchScript --------------------------------------------------------------------------
#
# Scripted code runs what eager runs (bit for bit): TorchScript cannot read autocast, tensor subclasses or the
# execution mode, so these helpers decide from what it can read — device, dtypes, whether gradients are needed —
# which in a scripted model (plain tensors, no autocast) gives the eager decision. TorchScript reads no module
# globals: what the import found out (native bf16, the fused op) is a function returning a literal.

if _NATIVE_BF16:

    def _scripted_native_bf16() -> bool:
        return True

else:

    def _scripted_native_bf16() -> bool:
        return False


def _scripted_onednn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether eager CPU runs the oneDNN projection on these operands (``_onednn_operands`` without autocast)."""
    if bias is not None and bias.dtype != x.dtype:
        return False
    return (
        x.device.type == "cpu"
        and x.numel() > 0
        and x.dtype == weight.dtype
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _scripted_native_bf16()))
    )


def _scripted_needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    if bias is not None and bias.requires_grad:
        return True
    return x.requires_grad or weight.requires_grad


def _scripted_post_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether eager CPU fuses the GELU into the oneDNN convolution (``_post_op_operands`` without autocast)."""
    return _scripted_has_post_op() and _scripted_onednn(x, weight, bias) and not _scripted_needs_grad(x, weight, bias)


def _scripted_conv_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``_onednn_linear``'s eager computation: the 1×1 convolution on the tokens as a channels-last map."""
    c_in = x.shape[-1]
    return _conv_linear(x.reshape(-1, c_in), weight, bias).reshape(list(x.shape[:-1]) + [weight.shape[0]])


if _POINTWISE_CONV is not None:

    def _scripted_has_post_op() -> bool:
        return True

    def _scripted_conv_gelu(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: List[int], groups: int
    ) -> torch.Tensor:
        """GELU(conv) with the GELU as oneDNN post-op: the eager op, spelled so that TorchScript resolves it."""
        no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, [1, 1], [1, 1], groups, "gelu", no_scalars, "none"
        )

else:  # a build without the op: _scripted_post_op is False, this is never called

    def _scripted_has_post_op() -> bool:
        return False

    def _scripted_conv_gelu(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: List[int], groups: int
    ) -> torch.Tensor:
        return F.gelu(F.conv2d(x, weight, bias, 1, padding, 1, groups))


@torch.jit.unused
def _post_op_operands(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """``_onednn_operands`` where a oneDNN post-op may be fused: eager (under torch.compile inductor runs its
    own GELU kernel), no gradients needed, the op present; else None."""
    operands = _onednn_operands(x, weight, bias)  # first: it returns None while tracing (no grad flags)
    if operands is None or operands[3] or _POINTWISE_CONV is None or _needs_grad(x, weight, bias):
        return None
    return operands


@torch.jit.unused
def _onednn_linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """GELU(x·Wᵀ + b) by one oneDNN convolution with the exact (erf) GELU as post-op, or None where it does not
    apply: eager CPU inference (no gradients) where ``_onednn_linear`` applies."""
    operands = _post_op_operands(x, weight, bias)
    if operands is None:
        return None
    x, weight, bias, _ = operands
    c_in = x.shape[-1]
    y = _POINTWISE_CONV(
        _token_map(x.reshape(-1, c_in).contiguous()),
        weight[:, :, None, None],
        bias,
        [0, 0],
        [1, 1],
        [1, 1],
        1,
        "gelu",
        [],
        "none",
    )
    return _map_tokens(y).reshape(x.shape[:-1] + (weight.shape[0],))


# The public kernels below run in TorchScript too. Each tries its fast path behind a literal
# ``torch.jit.is_scripting()`` check, which TorchScript folds at compile time, dropping the Python-only branch (see
# ``execution_mode``); the scripted branch decides through the ``_scripted_*`` helpers above and runs the kernel
# eager runs, so a scripted model computes what the eager model computes.


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` on tokens (..., C_in) → (..., C_out), through oneDNN on CPU in float32 (and
    in bf16 where the CPU has native bf16: a bf16 model or bf16 autocast, eager).

    Same result as ``F.linear`` up to float rounding (another summation order, ~1e-6 relative in float32); in every
    other case (GPU, other dtypes, tensor subclasses, jit tracing, export) it is ``F.linear``. TorchScript and
    torch.fx graphs run what eager runs."""
    if not torch.jit.is_scripting():
        y = _onednn_linear(x, weight, bias)
        if y is not None:
            return y
    elif _scripted_onednn(x, weight, bias):
        return _scripted_conv_linear(x, weight, bias)
    if not torch.jit.is_scripting():
        if x.dim() > 2 and torch.compiler.is_exporting():
            return _linear_2d(x, weight, bias)
    return F.linear(x, weight, bias)


@torch.jit.unused
def _linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear`` on the tokens flattened to a matrix: exported, a 2-D MatMul + bias Add is what ONNX Runtime
    fuses into one Gemm (its bias in the GEMM's epilogue); on (B, H, W, C) tokens it stays a MatMul and a
    separate Add over the output."""
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).reshape(x.shape[:-1] + (weight.shape[0],))


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def dense_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.gelu(dense(x, weight, bias))`` (exact GELU). In eager CPU inference (float32, or bf16 where ``dense``
    runs bf16 on oneDNN) the activation is the convolution's fused post-op; elsewhere the two separate steps."""
    if not torch.jit.is_scripting():
        y = _onednn_linear_gelu(x, weight, bias)
        if y is not None:
            return y
    elif _scripted_post_op(x, weight, bias):
        c_in = x.shape[-1]
        x_map = _token_map(x.reshape(-1, c_in).contiguous())
        y = _scripted_conv_gelu(x_map, weight[:, :, None, None], bias, [0, 0], 1)
        return _map_tokens(y).reshape(list(x.shape[:-1]) + [weight.shape[0]])
    return F.gelu(dense(x, weight, bias))


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply a 1×1 convolution (``weight`` C_out×C_in×1×1 and ``bias`` of a ``nn.Conv2d``) to channels-last ``x``
    (..., C_in) as a matrix multiply. Tensors, not the module: TorchScript cannot pass modules to functions."""
    return dense(x, weight.flatten(1), bias)


def linear_from_pointwise_conv(conv: nn.Conv2d) -> nn.Linear:
    """An ``nn.Linear`` computing what the 1×1 ``conv`` computes on channels-last tokens (same weights, copied)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1):
        raise ValueError(f"not a pointwise convolution: {conv}")
    linear = nn.Linear(
        conv.in_channels,
        conv.out_channels,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(conv.weight.flatten(1))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear.requires_grad_(conv.weight.requires_grad)


# -- convolutions on channels-last maps --------------------------------------------------------------------------


def conv2d_channels_last(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Run ``conv`` on a B×H×W×C tensor and return B×H'×W'×C'.

    The permutes are views: the convolution sees a channels-last-strided NCHW tensor and returns one, so no copy is
    made around it.
    """
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×H×W×C (a view when ``x`` is in ``torch.channels_last`` memory format)."""
    return x.permute(0, 2, 3, 1)


@torch.jit.unused
def _onednn_conv_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: list[int]
) -> Optional[torch.Tensor]:
    """GELU(depthwise conv) with the GELU as oneDNN post-op, under the conditions of ``_onednn_linear_gelu``."""
    operands = _post_op_operands(x, weight, bias)
    if operands is None:
        return None
    x, weight, bias, _ = operands
    return _POINTWISE_CONV(x, weight, bias, padding, [1, 1], [1, 1], weight.shape[0], "gelu", [], "none")


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def residual_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False
) -> torch.Tensor:
    """``x + conv(x)`` on B×H×W×C for a depthwise, stride-1, same-padded ``conv`` (given by its ``weight``,
    C×1×k×k, and ``bias``), as a single convolution; with ``gelu``, ``GELU(x + conv(x))`` (exact GELU; fused
    into the convolution as oneDNN's post-op in eager CPU inference).

    The identity is folded into the kernel's centre tap, which saves a full read-add-write pass over the map
    (the LPU of DAT++ and the depthwise conv inside its MLP are both of this form).
    """
    k = weight.shape[-2:]
    # the centre-tap kernel as a padded 1×1 of ones (no item assignment, which torch.fx cannot trace)
    identity = F.pad(
        weight.new_ones(weight.shape[0], weight.shape[1], 1, 1),
        [k[1] // 2, k[1] - 1 - k[1] // 2, k[0] // 2, k[0] - 1 - k[0] // 2],
    )
    padding = [k[0] // 2, k[1] // 2]
    x_map = x.permute(0, 3, 1, 2)
    if gelu and not torch.jit.is_scripting():
        out = _onednn_conv_gelu(x_map, weight + identity, bias, padding)
        if out is not None:
            return out.permute(0, 2, 3, 1)
    elif gelu and _scripted_post_op(x_map, weight, bias):
        return _scripted_conv_gelu(x_map, weight + identity, bias, padding, weight.shape[0]).permute(0, 2, 3, 1)
    out = F.conv2d(x_map, weight + identity, bias, 1, padding, 1, weight.shape[0])
    if gelu:
        out = F.gelu(out)
    return out.permute(0, 2, 3, 1)


# -- bilinear sampling --------------------------------------------------------------------------------------------
#
# Inductor decomposes ``aten.grid_sampler_2d`` into generated C++ loops. For the D block's position bias (one
# bilinear read of a small table per query/key pair: B·heads·HW·Ns of them) those loops run ~4× slower than ATen's
# vectorised CPU kernel, so inside torch.compile the fast path calls ATen's kernel through this opaque custom op
# (and its backward kernel for training); eager, TorchScript, torch.fx, torch.export and ONNX export see
# ``F.grid_sample``.


@torch.library.custom_op("datvit::grid_sample_bilinear", mutates_args=())
def _grid_sample_op(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # interpolation 0 = bilinear, padding 0 = zeros, align_corners=True
    return torch.ops.aten.grid_sampler_2d(input, grid, 0, 0, True)


@_grid_sample_op.register_fake
def _grid_sample_shape(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return input.new_empty(input.shape[0], input.shape[1], grid.shape[1], grid.shape[2])


def _grid_sample_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _grid_sample_backward(ctx, grad: torch.Tensor):
    input, grid = ctx.saved_tensors
    need_input, need_grid = ctx.needs_input_grad
    grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
        grad.contiguous(), input, grid, 0, 0, True, [need_input, need_grid]
    )
    return (grad_input if need_input else None), (grad_grid if need_grid else None)


_grid_sample_op.register_autograd(_grid_sample_backward, setup_context=_grid_sample_setup)


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def grid_sample_bilinear(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)``; under
    torch.compile (not export) through ATen's kernel as an opaque op (see above)."""
    if not torch.jit.is_scripting():
        if execution_mode(input) is ExecutionMode.COMPILED:
            return _grid_sample_op(input, grid)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _bilinear_corners(
    pos: torch.Tensor, batch: int, height: int, width: int, groups: int
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The four bilinear corners of ``pos`` ((B·G)×hk×wk×2, (y, x), align_corners=True) on an H×W map: for each,
    the row-major pixel index (B×G×Ns, clamped into the map) and the weight (B×G×Ns, zero where the corner lies
    outside — ``grid_sample``'s zero padding)."""
    ns = pos.shape[1] * pos.shape[2]
    py = ((pos[..., 0] + 1) * (0.5 * (height - 1))).reshape(batch, groups, ns)
    px = ((pos[..., 1] + 1) * (0.5 * (width - 1))).reshape(batch, groups, ns)
    y0, x0 = py.floor(), px.floor()
    wy1, wx1 = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    corners: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)
            corners.append((index, torch.where(inside, wy * wx, 0.0)))
    return corners


@torch.jit.unused
def _gather_channels_last(x: torch.Tensor, pos: torch.Tensor, groups: int) -> torch.Tensor:
    """``sample_channels_last`` as four gathers of channel rows weighted by the bilinear weights (zero outside)."""
    B, H, W, C = x.shape
    ns = pos.shape[1] * pos.shape[2]
    rows = x.reshape(B, H * W, groups, C // groups)
    b = torch.arange(B, device=x.device).view(B, 1, 1)
    g = torch.arange(groups, device=x.device).view(1, groups, 1)
    out = None
    for index, weight in _bilinear_corners(pos, B, H, W, groups):
        corner = rows[b, index, g].to(pos.dtype)  # B×G×Ns×C/G
        out = weight.unsqueeze(-1) * corner if out is None else out + weight.unsqueeze(-1) * corner
    assert out is not None
    return out.transpose(1, 2).reshape(B, ns, C).to(x.dtype)


def _embedding_bag_channels_last(x: torch.Tensor, pos: torch.Tensor, groups: int) -> torch.Tensor:
    """``sample_channels_last`` as one ``F.embedding_bag``: the table is ``x``'s rows of C/G channels
    ((B·H·W·G)×C/G, a view of the channels-last map), each sample a bag of its four corner rows with the bilinear
    weights as per-sample weights. Bags are ordered (image, sample, group), so the result is B×Ns×C as it comes.
    Autograd flows to ``x`` (the table) and to ``pos`` (through the weights), as through ``grid_sample``."""
    B, H, W, C = x.shape
    ns = pos.shape[1] * pos.shape[2]
    corners = _bilinear_corners(pos, B, H, W, groups)
    image = torch.arange(B, device=x.device).view(B, 1, 1) * (H * W)
    group = torch.arange(groups, device=x.device).view(1, groups, 1)
    # (loops, not comprehensions over pairs: TorchScript compiles this too)
    rows_list: List[torch.Tensor] = []
    weights_list: List[torch.Tensor] = []
    for index, weight in corners:
        rows_list.append((image + index) * groups + group)
        weights_list.append(weight)
    rows, weights = torch.stack(rows_list, -1), torch.stack(weights_list, -1)  # B×G×Ns×4
    table = x.reshape(B * H * W * groups, C // groups).to(pos.dtype)
    out = F.embedding_bag(
        rows.transpose(1, 2).reshape(-1, 4),
        table,
        per_sample_weights=weights.transpose(1, 2).reshape(-1, 4),
        mode="sum",
    )
    return out.view(B, ns, C).to(x.dtype)


# -- gather formulations for exported graphs (``export_options(sampling="gather")``) --------------------------------
#
# For runtimes without ONNX ``GridSample`` or with a wrong one (TensorRT has miscompiled it), the D block's two
# bilinear reads are written as gathers of a flattened table plus arithmetic, shaped for ONNX Runtime's and
# OpenVINO's CPU kernels (measured on ORT 1.32): a ``Gather`` costs ~15 ns per index whatever the row size up to a
# few dozen floats, a ``GatherElements`` of scalars ~4 ns per element, and ORT's broadcasting and transposes are
# slow where the innermost dimension is tiny. So the sampling gathers whole channel rows (C/G floats, one
# ``Gather`` per corner), and the position bias gathers scalars (``GatherElements``) into the output's own layout.
# (``Gather`` of scalars instead: 3–4× slower in ORT, 1.2× faster in OpenVINO, whose ``GatherElements`` is a
# reference kernel; OpenVINO's ``GridSample`` is a fast JIT kernel, so there the default graph stays ahead.)
# Indices are int64 from ``floor``; sizes may be symbolic (dynamic H×W exports).


def _gather_sample_export(x: torch.Tensor, pos: torch.Tensor, groups: int) -> torch.Tensor:
    """``sample_channels_last`` as four ``Gather``s of channel rows: the table is ``x`` as (B·H·W·G)×(C/G) rows,
    each corner's indices (B×Ns×G, clamped into the map) pick one row per sample and group, and the bilinear
    weights carry ``grid_sample``'s zero padding (a corner outside the map weighs 0). Indices are ordered (image,
    sample, group), so the weighted sum is B×Ns×C as it comes."""
    B, H, W, C = x.shape
    ns = pos.shape[1] * pos.shape[2]
    p = pos.reshape(B, groups, ns, 2).transpose(1, 2)  # B×Ns×G×2 (small)
    # align_corners=True: [-1, 1] → [0, size − 1], as ATen's vectorised kernel computes it
    py = (p[..., 0] + 1) * ((H - 1) * 0.5)
    px = (p[..., 1] + 1) * ((W - 1) * 0.5)
    y0, x0 = py.floor(), px.floor()
    wy1, wx1 = py - y0, px - x0
    axes_y: List[Tuple[torch.Tensor, torch.Tensor]] = []
    axes_x: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for lo, w, size, axes in ((y0, wy1, H, axes_y), (x0, wx1, W, axes_x)):
        for corner, weight in ((lo, 1 - w), (lo + 1, w)):
            inside = corner.clamp(0, size - 1)
            # a clamped corner lies outside the map: weight 0 (zero padding)
            axes.append((inside.long(), weight * (inside == corner).to(weight.dtype)))
    # row of (image b, pixel (y, x), group g) in the table: ((b·H + y)·W + x)·G + g
    image = torch.arange(B, device=x.device).view(B, 1, 1) * (H * W * groups)
    base = image + torch.arange(groups, device=x.device).view(1, 1, groups)
    table = x.reshape(B * H * W * groups, C // groups).to(pos.dtype)
    out: Optional[torch.Tensor] = None
    for yi, wy in axes_y:
        row = yi * (W * groups) + base
        for xi, wx in axes_x:
            corner = F.embedding(row + xi * groups, table) * (wy * wx).unsqueeze(-1)  # B×Ns×G×C/G
            out = corner if out is None else out + corner
    assert out is not None
    return out.reshape(B, ns, C).to(x.dtype)


def position_bias_gather(table: torch.Tensor, pos: torch.Tensor, q_grid: torch.Tensor) -> torch.Tensor:
    """``deformable_position_bias`` (bias B×heads×(H·W)×Ns: ``table``, heads×Th×Tw, read bilinearly at
    (q − p)/2, align_corners=True, zeros outside) without ``grid_sample``, for exported graphs. ``q_grid`` is a
    meshgrid (``query_grid``'s): its rows share y, its columns x.

    - The table is zero-padded (one row/column before, two after) and the coordinates clamped to [−1, T], so every
      read lands in the padded table and reads zeros where ``grid_sample`` pads: no validity masks.
    - Each cell stores its bilinear coefficients a, b, c, d (value, x step, y step, cross term; the table is
      small), so a read is a + wx·b + wy·(c + wx·d): one index per (head, query, sample) for all four.
    - The query grid is separable, so the y coordinate depends on (query row, sample) only and x on (query
      column, sample): floor, clamp and weights run on B×G×H×Ns and B×G×W×Ns, and the only full-size index
      arithmetic is one broadcast add. The four ``GatherElements`` (one per coefficient) then write
      B×G×(heads/G)×H×W×Ns, the output's own layout."""
    heads, th, tw = table.shape
    B, G, ns, _ = pos.shape
    H, W, _ = q_grid.shape
    hg = heads // G
    padded = F.pad(table, (1, 2, 1, 2))  # heads×(Th+3)×(Tw+3)
    a = padded[:, :-1, :-1]
    b = padded[:, :-1, 1:] - a
    c = padded[:, 1:, :-1] - a
    d = padded[:, 1:, 1:] - padded[:, 1:, :-1] - b
    row = tw + 2
    cells = (th + 2) * row
    coefs = torch.stack([a, b, c, d]).reshape(4, heads * cells)  # coefficient k of head j at cell i: [k, j·cells + i]
    # the coordinates grid_sample computes: (q − p)/2 from halves (as deformable_position_bias builds its grid),
    # unnormalised as ATen does ((g + 1)·(T − 1)/2), then clamped into the padded table
    # (unsqueezes, not reshapes of strided views: a dynamic-size export would guard on one-pixel maps)
    qy = q_grid[:, :1, 0].unsqueeze(0).unsqueeze(0) * 0.5  # 1×1×H×1
    qx = q_grid[:1, :, 1].unsqueeze(-1).unsqueeze(0) * 0.5  # 1×1×W×1
    py = pos[..., 0].unsqueeze(2) * 0.5  # B×G×1×Ns
    px = pos[..., 1].unsqueeze(2) * 0.5
    y = ((qy - py + 1) * ((th - 1) * 0.5)).clamp(-1.0, float(th))  # B×G×H×Ns
    x = ((qx - px + 1) * ((tw - 1) * 0.5)).clamp(-1.0, float(tw))  # B×G×W×Ns
    y0, x0 = y.floor(), x.floor()
    wy = (y - y0).unsqueeze(2).unsqueeze(4)  # B×G×1×H×1×Ns
    wx = (x - x0).unsqueeze(2).unsqueeze(3)  # B×G×1×1×W×Ns
    # cell (y0 + 1, x0 + 1) of the padded table, in head j's block
    head = torch.arange(heads, device=table.device).view(1, G, hg, 1, 1, 1) * cells + (row + 1)
    index = (y0.long() * row).unsqueeze(2).unsqueeze(4) + x0.long().unsqueeze(2).unsqueeze(3) + head
    index = index.flatten()
    va, vb, vc, vd = [torch.gather(coefs[k], 0, index).view(B, G, hg, H, W, ns) for k in range(4)]
    return (va + wx * vb + wy * (vc + wx * vd)).reshape(B, heads, H * W, ns)


@register_notrace_function  # a leaf of fx graphs: they run the kernel eager runs (see layers/tracing.py)
def sample_channels_last(x: torch.Tensor, pos: torch.Tensor, groups: int) -> torch.Tensor:
    """Bilinear samples of channels-last ``x`` (B×H×W×C, ``groups`` groups of C/G channels) at ``pos``
    ((B·G)×hk×wk×2, (y, x) in [−1, 1], one set of positions per group; align_corners=True, zeros outside) →
    B×(hk·wk)×C in ``x``'s dtype, interpolated in ``pos``'s dtype (the D block's keys/values).

    Three formulations of the authors' ``F.grid_sample`` on the (B·G)×(C/G)×H×W map, all equal to it:

    - eager on CPU (inference and training): one ``F.embedding_bag`` — each sample is a bag of the four corner
      rows of channels, weighted by their bilinear weights (zero outside), and the bags come out channels-last:
      no NCHW copy before and no transpose after (dat_tiny stage 3 at batch 32: 3× faster in float32);
    - compiled inference: the same four corners as gathers that inductor fuses into one vectorised pass;
    - ``F.grid_sample`` itself on other devices, in compiled training, jit tracing and export (TorchScript and
      torch.fx graphs run what eager runs); under ``export_options(sampling="gather")`` exports record four row
      gathers instead (``_gather_sample_export``)."""
    if not torch.jit.is_scripting():
        mode = execution_mode(x)
        if mode is ExecutionMode.EXPORTING:
            if export_sampling() == "gather":
                return _gather_sample_export(x, pos, groups)
        elif mode is ExecutionMode.COMPILED:
            if not _needs_grad(x, pos):
                return _gather_channels_last(x, pos, groups)
        elif mode is ExecutionMode.EAGER_CPU and pos.dtype in (torch.float32, torch.float64) and x.is_floating_point():
            return _embedding_bag_channels_last(x, pos, groups)
    elif (
        x.device.type == "cpu" and (pos.dtype == torch.float32 or pos.dtype == torch.float64) and x.is_floating_point()
    ):
        return _embedding_bag_channels_last(x, pos, groups)  # what eager runs on CPU
    B, H, W, C = x.shape
    hk, wk = pos.shape[1], pos.shape[2]
    # (the copy a reshape makes anyway, as a clone: a reshape asks whether the map is one pixel, which a
    # dynamic-size export would have to guard on)
    x_groups = x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).view(B * groups, C // groups, H, W)
    sampled = grid_sample_bilinear(x_groups.to(pos.dtype), pos.flip(-1)).to(x.dtype)
    # clone, not contiguous(): the same copy, without the contiguity test that a dynamic-size export would have to
    # guard on (whether the key grid has one pixel)
    return sampled.reshape(B, C, hk * wk).transpose(1, 2).clone(memory_format=torch.contiguous_format)


# plain torch.fx.symbolic_trace records calls made through this module (``ops.dense``) as leaves too
torch.fx.wrap("dense")
torch.fx.wrap("dense_gelu")
torch.fx.wrap("pointwise")
torch.fx.wrap("residual_depthwise_conv")
torch.fx.wrap("grid_sample_bilinear")
torch.fx.wrap("sample_channels_last")
