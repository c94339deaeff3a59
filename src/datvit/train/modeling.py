"""Model choices that belong to training only (the init of the linear layers). Building models from names,
presets and configurations lives in ``datvit.models.factory`` (inference uses it too); its names are re-exported
here for code written against datvit 0.1.0."""
from __future__ import annotations

from torch import nn

from ..models.factory import (PRESETS, arch_record, build_model, count_parameters, head_size, known_models,
                              load_model_config, model_from_arch, resolve_model_kwargs)

create_model = build_model   # the 0.1.0 name

__all__ = ["PRESETS", "arch_record", "build_model", "count_parameters", "create_model", "head_size", "known_models",
           "load_model_config", "model_from_arch", "reset_linear_layers", "resolve_model_kwargs"]


def reset_linear_layers(model: nn.Module) -> int:
    """Re-initialise every ``nn.Linear`` with PyTorch's default (Kaiming-uniform) init — what the authors' released
    code ends up with, since its init loop is a no-op — instead of the truncated normal (std 0.02) datvit's
    models start from. It trains faster in short runs (Fashion-MNIST: +3 points of test accuracy after 200
    steps). Returns the number of layers reset."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        layer.reset_parameters()
    return len(layers)
