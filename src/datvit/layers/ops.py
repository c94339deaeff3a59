"""Small layout helpers shared by the fast paths (channels-last tokens, B×H×W×C)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Apply a 1×1 ``nn.Conv2d`` to channels-last ``x`` (..., C_in) as a matrix multiply."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


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
