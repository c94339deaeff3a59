"""The two feed-forward networks of DAT: the plain MLP (v1) and the MLP with a depthwise conv (DAT++)."""

import torch
import torch.fx
from torch import nn

from .ops import (
    dense,
    dense_gelu,
    linear_from_pointwise_conv,
    pointwise,
    residual_depthwise_conv,
)
from .shapes import conv_input_channels_last

# the fast-path kernels are leaves of fx graphs (see layers/tracing.py)
torch.fx.wrap("dense")
torch.fx.wrap("dense_gelu")
torch.fx.wrap("pointwise")
torch.fx.wrap("residual_depthwise_conv")


class Mlp(nn.Module):
    """Linear(C, eC) → GELU → Linear(eC, C), on tokens. Keys ``chunk.linear1`` / ``chunk.linear2`` (DAT v1)."""

    def __init__(self, dim: int, expansion: int = 4, drop: float = 0.0):
        super().__init__()
        hidden = dim * expansion
        self.chunk = nn.Sequential()
        self.chunk.add_module("linear1", nn.Linear(dim, hidden))
        self.chunk.add_module("act", nn.GELU())
        self.chunk.add_module("drop1", nn.Dropout(drop))
        self.chunk.add_module("linear2", nn.Linear(hidden, dim))
        self.chunk.add_module("drop2", nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×H×W×C. The two projections go through ``dense`` (oneDNN on CPU; in inference the GELU is
        fused into the first)."""
        c = self.chunk
        if isinstance(c.act, nn.GELU) and c.act.approximate == "none":
            h = dense_gelu(x, c.linear1.weight, c.linear1.bias)
        else:
            h = c.act(dense(x, c.linear1.weight, c.linear1.bias))
        h = c.drop1(h)
        return c.drop2(dense(h, c.linear2.weight, c.linear2.bias))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×C×H×W, flattened to tokens and back as the authors do."""
        B, C, H, W = x.shape
        y = self.chunk(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(B, C, H, W)


class ConvMlp(nn.Module):
    """1×1 conv C→eC, ``h + dwconv3×3(h)``, GELU, 1×1 conv eC→C (DAT++).

    The 1×1 convolutions keep their conv-shaped weights (keys ``linear1.0`` / ``linear2.0``) so the authors'
    checkpoints load unchanged; the fast path applies them as matrix multiplies on channels-last tokens.
    """

    def __init__(self, dim: int, expansion: int = 4, drop: float = 0.0):
        super().__init__()
        hidden = dim * expansion
        self.linear1 = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.linear2 = nn.Sequential(nn.Conv2d(hidden, dim, 1))
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×H×W×C."""
        first, second = self.linear1[0], self.linear2[0]
        if isinstance(first, nn.Linear):  # after use_linear_projections() (deployment)
            h = first(x)
        else:
            h = pointwise(x, first.weight, first.bias)
        h = self.drop1(residual_depthwise_conv(conv_input_channels_last(h), self.dwc.weight, self.dwc.bias, gelu=True))
        if isinstance(second, nn.Linear):
            return self.drop2(second(h))
        return self.drop2(pointwise(h, second.weight, second.bias))

    @torch.jit.unused
    def use_linear_projections(self) -> None:
        """Replace the two 1×1 convolutions by ``nn.Linear`` with the same weights, in place (for torchao's int8,
        which quantizes ``nn.Linear`` only); the fast path is unchanged, the reference path unavailable after."""
        for seq in (self.linear1, self.linear2):
            conv = seq[0]
            if isinstance(conv, nn.Linear):
                continue
            seq[0] = linear_from_pointwise_conv(conv)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×C×H×W."""
        if isinstance(self.linear1[0], nn.Linear):
            raise RuntimeError(
                "the reference path needs the 1×1 convolutions; this module was converted for "
                "deployment by use_linear_projections()"
            )
        h = self.linear1(x)
        h = h + self.dwc(h)
        h = self.drop1(self.act(h))
        return self.drop2(self.linear2(h))
