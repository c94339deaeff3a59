"""Layer normalisation over the channel dimension of a feature map."""

import torch
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels, for channels-last maps (fast path) or B×C×H×W maps (reference path).

    The LayerNorm lives in a child called ``norm`` so that parameters are named ``<name>.norm.weight`` exactly as in
    the authors' checkpoints (their ``LayerNormProxy``).
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., C) channels-last."""
        return self.norm(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×C×H×W. Permutes to channels-last and back, as the authors do around every LayerNorm."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
