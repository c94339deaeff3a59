"""Inference: the datvit checkpoint format, and a model plus its preprocessing from any checkpoint file.

Sits above ``models`` and below ``train`` / ``tools`` / ``dense`` / ``cli``: it never imports ``train``.
"""
from ..models.checkpoint import CheckpointError
from .checkpoint_format import (FORMAT_VERSION, DatvitCheckpoint, build_checkpoint, parse_checkpoint,
                                read_datvit_checkpoint)

__all__ = ["CheckpointError", "DatvitCheckpoint", "FORMAT_VERSION", "build_checkpoint", "parse_checkpoint",
           "read_datvit_checkpoint"]
