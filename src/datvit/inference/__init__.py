"""Inference: the datvit checkpoint format, and a model plus its preprocessing from any checkpoint file.

``load_model(checkpoint, model=None, ...)`` → ``LoadedModel`` (model in eval mode, data config, class names,
arch, source); ``eval_transform(data_config)`` → timm's evaluation transform. ``checkpoint_format`` owns what a
datvit checkpoint holds; ``hub`` the ``model.safetensors`` + ``config.json`` layout. Sits above ``models`` and
below ``train`` / ``tools`` / ``dense`` / ``cli``: it never imports ``train``.
"""

from ..models.checkpoint import CheckpointError
from .checkpoint_format import (
    FORMAT_VERSION,
    DatvitCheckpoint,
    build_checkpoint,
    parse_checkpoint,
    read_datvit_checkpoint,
)
from .hub import hub_config, save_hub_directory
from .loading import LoadedModel, eval_transform, load_model, resolve_data_config

__all__ = [
    "CheckpointError",
    "DatvitCheckpoint",
    "FORMAT_VERSION",
    "LoadedModel",
    "build_checkpoint",
    "eval_transform",
    "hub_config",
    "load_model",
    "parse_checkpoint",
    "read_datvit_checkpoint",
    "resolve_data_config",
    "save_hub_directory",
]
