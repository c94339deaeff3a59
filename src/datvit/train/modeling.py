"""Model choices that belong to training only: the init of the linear layers. Building models from names,
presets and configurations lives in ``datvit.models.factory`` (inference uses it too)."""

from __future__ import annotations

from torch import nn


def reset_linear_layers(model: nn.Module) -> int:
    """Re-initialise every ``nn.Linear`` with PyTorch's default (Kaiming-uniform) init — what the authors' released
    code ends up with, since its init loop is a no-op — instead of the truncated normal (std 0.02) datvit's
    models start from. It trains faster in short runs (Fashion-MNIST: +3 points of test accuracy after 200
    steps). Returns the number of layers reset."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        layer.reset_parameters()
    return len(layers)
