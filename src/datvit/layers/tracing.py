"""What the layers need to know about being traced: ``torch.fx`` symbolic tracing, TorchScript, ``torch.export``.

Shape arithmetic that branches on sizes (window padding, the DAT++ grid divisor ``max(n − 1, 1)``, the choice of
neighborhood tiling) cannot be traced by ``torch.fx``, whose sizes are ``Proxy`` objects. Those steps live in free
functions that each module registers with ``torch.fx.wrap`` (so any ``symbolic_trace``, torchvision's
``create_feature_extractor`` included, records them as one call) and with timm's ``register_notrace_function``
(timm's ``features_only=True, feature_cls='fx'``), the mechanism timm's Swin uses for ``window_reverse``.
"""
from __future__ import annotations

import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


def is_tracing() -> bool:
    """True while ``torch.fx`` traces symbolically or dynamo / ``torch.export`` / the ONNX exporter trace."""
    return is_fx_symbolic_tracing() or torch.compiler.is_compiling()
