"""Analysis and visualisation of trained DAT models."""
from .deformable_points import DeformablePoints, collect_deformable_points, plot_deformable_points

__all__ = ["DeformablePoints", "collect_deformable_points", "plot_deformable_points"]
