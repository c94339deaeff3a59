"""Stems (image → stage-1 map) and the downsampling layers between stages."""

import torch
from torch import nn

from .norm import ChannelLayerNorm
from .ops import to_channels_last
from .shapes import conv_input


class _ConvNormSequence(nn.Sequential):
    """A ``nn.Sequential`` of convs, ``ChannelLayerNorm`` and activations that keeps the authors' indices as keys.

    Input B×C×H×W. ``forward`` returns channels-last B×H×W×C; ``reference_forward`` stays B×C×H×W with the
    authors' permutes around each norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = False
        for layer in self:
            if isinstance(layer, ChannelLayerNorm):
                if not channels_last:
                    x, channels_last = to_channels_last(x), True
                x = layer(x)
            elif isinstance(layer, nn.Conv2d):
                if channels_last:
                    x, channels_last = conv_input(x), False
                x = layer(x)
            else:
                x = layer(x)
        return x if channels_last else to_channels_last(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.reference_forward(x) if isinstance(layer, ChannelLayerNorm) else layer(x)
        return x


class PatchStem(_ConvNormSequence):
    """DAT v1 stem: Conv k×k stride k (3 → C) → LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, eps: float = 1e-5):
        super().__init__(nn.Conv2d(in_chans, dim, patch_size, patch_size), ChannelLayerNorm(dim, eps))
        self.reduction = patch_size


class ConvStem(_ConvNormSequence):
    """DAT++ stem: Conv3×3 s(p/2) → LN → GELU → Conv3×3 s(p/2) → LN, halving the channels in between."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, eps: float = 1e-5):
        stride = patch_size // 2
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, 3, stride, 1),
            ChannelLayerNorm(dim // 2, eps),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride, 1),
            ChannelLayerNorm(dim, eps),
        )
        self.reduction = stride * stride


class Downsample(_ConvNormSequence):
    """Between stages: Conv (2×2 s2 for v1, 3×3 s2 p1 for DAT++), no bias → LayerNorm. Input channels-last."""

    def __init__(self, dim_in: int, dim_out: int, overlapping: bool, eps: float = 1e-5):
        conv = (
            nn.Conv2d(dim_in, dim_out, 3, 2, 1, bias=False)
            if overlapping
            else nn.Conv2d(dim_in, dim_out, 2, 2, 0, bias=False)
        )
        super().__init__(conv, ChannelLayerNorm(dim_out, eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×H×W×C → B×H/2×W/2×C'."""
        return super().forward(conv_input(x))
