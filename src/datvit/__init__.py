"""datvit — the Deformable Attention Transformer (DAT, CVPR 2022) and DAT++ in plain PyTorch, timm-compatible.

``import datvit`` registers ``dat_tiny``, ``dat_small``, ``dat_base``, ``dat_base_384``, ``datpp_tiny``,
``datpp_small``, ``datpp_base`` and ``datpp_base_384`` with timm.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from .deploy import optimize_for_inference
from .models import DAT, VARIANTS, CheckpointError, from_authors_config, load_checkpoint, model_config
from .runtime import preserve_signal_stack, tune_cpu_allocator

__version__ = "0.1.0"


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for DAT variants; ``checkpoint_path`` loads a file (ours or the authors')."""
    if checkpoint_path:
        kwargs.setdefault("pretrained_cfg_overlay", {})["file"] = checkpoint_path
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def list_models() -> list[str]:
    """The registered DAT and DAT++ variants."""
    return list(VARIANTS)


__all__ = [
    "DAT",
    "VARIANTS",
    "CheckpointError",
    "create_model",
    "from_authors_config",
    "list_models",
    "load_checkpoint",
    "model_config",
    "optimize_for_inference",
    "preserve_signal_stack",
    "tune_cpu_allocator",
    "__version__",
]
