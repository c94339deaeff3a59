"""Analysis and visualisation of trained DAT models."""

from .attention_maps import (
    DeformableAttentionMap,
    collect_deformable_attention,
    deformable_blocks,
    parse_blocks,
    plot_deformable_attention,
)
from .deformable_points import DeformablePoints, collect_deformable_points, plot_deformable_points
from .flops import FlopsReport, FlopsRow, count_flops, count_variant_flops

__all__ = [
    "DeformableAttentionMap",
    "DeformablePoints",
    "FlopsReport",
    "FlopsRow",
    "collect_deformable_attention",
    "collect_deformable_points",
    "count_flops",
    "count_variant_flops",
    "deformable_blocks",
    "parse_blocks",
    "plot_deformable_attention",
    "plot_deformable_points",
]
