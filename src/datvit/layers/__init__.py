"""Building blocks of DAT and DAT++. Every layer has a fast ``forward`` on channels-last B×H×W×C tokens and a
``reference_forward`` on B×C×H×W that follows the authors' algorithm step by step (the oracle of the fast path)."""

from .deformable_attention import (
    DeformableAttention,
    deformable_position_bias,
    query_grid,
    reference_points,
)
from .embed import ConvStem, Downsample, PatchStem
from .mlp import ConvMlp, Mlp
from .neighborhood_attention import (
    NeighborhoodAttention2D,
    neighborhood_attention_gather,
    neighborhood_attention_tiled,
)
from .norm import ChannelLayerNorm
from .tracing import ExecutionMode, execution_mode
from .window_attention import (
    LocalAttention,
    ShiftWindowAttention,
    relative_position_index,
    window_attention_mask,
)

__all__ = [
    "ChannelLayerNorm",
    "ConvMlp",
    "ConvStem",
    "DeformableAttention",
    "Downsample",
    "ExecutionMode",
    "LocalAttention",
    "Mlp",
    "NeighborhoodAttention2D",
    "PatchStem",
    "ShiftWindowAttention",
    "deformable_position_bias",
    "execution_mode",
    "neighborhood_attention_gather",
    "neighborhood_attention_tiled",
    "query_grid",
    "reference_points",
    "relative_position_index",
    "window_attention_mask",
]
