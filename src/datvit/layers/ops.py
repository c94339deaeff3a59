"""Small layout helpers shared by the fast paths (channels-last tokens, B×H×W×C)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply a 1×1 convolution (``weight`` C_out×C_in×1×1 and ``bias`` of a ``nn.Conv2d``) to channels-last ``x``
    (..., C_in) as a matrix multiply. Tensors, not the module: TorchScript cannot pass modules to functions."""
    return F.linear(x, weight.flatten(1), bias)


def conv2d_channels_last(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Run ``conv`` on a B×H×W×C tensor and return B×H'×W'×C'.

    The permutes are views: the convolution sees a channels-last-strided NCHW tensor and returns one, so no copy is
    made around it.
    """
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×H×W×C (a view when ``x`` is in ``torch.channels_last`` memory format)."""
    return x.permute(0, 2, 3, 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """B×H×W×C → B×C×H×W (a view with channels-last strides)."""
    return x.permute(0, 3, 1, 2)


def residual_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + conv(x)`` on B×H×W×C for a depthwise, stride-1, same-padded ``conv`` (given by its ``weight``,
    C×1×k×k, and ``bias``), as a single convolution.

    The identity is folded into the kernel's centre tap, which saves a full read-add-write pass over the map
    (the LPU of DAT++ and the depthwise conv inside its MLP are both of this form).
    """
    k = weight.shape[-2:]
    # the centre-tap kernel as a padded 1×1 of ones (no item assignment, which torch.fx cannot trace)
    identity = F.pad(weight.new_ones(weight.shape[0], weight.shape[1], 1, 1),
                     [k[1] // 2, k[1] - 1 - k[1] // 2, k[0] // 2, k[0] - 1 - k[0] // 2])
    out = F.conv2d(x.permute(0, 3, 1, 2), weight + identity, bias, 1, [k[0] // 2, k[1] // 2], 1, weight.shape[0])
    return out.permute(0, 2, 3, 1)
