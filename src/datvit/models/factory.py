"""Models from names and configurations: a registered variant, a small preset, or custom ``DAT`` arguments — and
rebuilding one from a checkpoint's ``arch`` record without being told the variant.

Inference (``datvit.inference.load_model``) and training (``datvit train``) both build through here, so a model
trained from ``--model-kwargs`` is rebuilt from its checkpoint exactly (``arch = {"name", "kwargs"}`` holds the
complete constructor arguments).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import os
from typing import Any, Mapping, Optional

import timm
import torch
import yaml
from torch import nn

from .configs import model_config, stage_spec_for
from .dat import DAT
from .registry import VARIANTS

# Small DAT v1 configurations for quick CPU runs (not registered with timm: they are training presets).
# dat_nano: 2.3M parameters for 32×32 inputs (Fashion-MNIST) — a 2×2 patch stem, dims 32/64/128/256, one L/S pair
# in stages 1–2, an L/D pair in stages 3–4 (windows 4/4/4/2).
PRESETS: dict[str, dict[str, Any]] = {
    "dat_nano": dict(
        generation="v1",
        img_size=32,
        patch_size=2,
        dim_stem=32,
        dims=[32, 64, 128, 256],
        depths=[2, 2, 2, 2],
        heads=[1, 2, 4, 8],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D"], ["L", "D"]],
        window_sizes=[4, 4, 4, 2],
        groups=[1, 1, 2, 4],
        strides=[1, 1, 1, 1],
        offset_range_factor=[-1, -1, 2, 2],
        use_pes=[False, False, True, True],
        ksizes=[9, 7, 5, 3],
        use_conv_patches=False,
        use_dwc_mlps=[False] * 4,
        use_lpus=[False] * 4,
        drop_path_rate=0.0,
    ),
}

# What timm.create_model accepts for a registered variant besides DAT's own arguments.
_TIMM_ARGUMENTS = frozenset(
    {
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "features_only",
        "out_indices",
        "feature_cls",
        "output_stride",
        "feature_cfg",
    }
)


def known_models() -> list[str]:
    """Names ``--model`` accepts without a custom configuration."""
    return list(VARIANTS) + list(PRESETS)


def model_arguments() -> list[str]:
    """The constructor arguments of ``DAT`` (what ``--model-kwargs`` and ``--model-config`` may set)."""
    return [p for p in inspect.signature(DAT.__init__).parameters if p != "self"]


def check_model_arguments(kwargs: Mapping[str, Any], where: str = "model argument") -> None:
    """``ValueError`` naming the first unknown argument and the closest known one (a typo such as ``depth``)."""
    known = model_arguments()
    for key in kwargs:
        if key not in known and key not in _TIMM_ARGUMENTS:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; DAT takes {', '.join(known)}"
            raise ValueError(f"unknown {where} {key!r}{hint}")


def load_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """DAT constructor arguments from a YAML or JSON file (a mapping; a ``model_kwargs`` key may wrap it)."""
    try:
        with open(path) as f:
            data = json.load(f) if os.fspath(path).endswith(".json") else yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"model config file not found: {path}") from None
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid {'JSON' if os.fspath(path).endswith('.json') else 'YAML'}: {str(e).splitlines()[0]}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("model_kwargs"), dict):
        data = data["model_kwargs"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of DAT constructor arguments")
    config = {str(k).replace("-", "_"): v for k, v in data.items()}
    check_model_arguments(config, f"model argument in {path}:")
    return config


def is_timm_cnn(name: str) -> bool:
    """A timm model that is not DAT (``convnext_atto``, ``resnet18``, ...): trained for comparisons, built by timm
    with its own arguments (``--model-kwargs`` are timm's, e.g. ``dims`` for ConvNeXt)."""
    return name not in VARIANTS and name not in PRESETS and timm.is_model(name)


def resolve_model_kwargs(
    name: str,
    config: Optional[Mapping[str, Any]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    **fixed: Any,
) -> dict[str, Any]:
    """The complete constructor arguments: the variant's (or preset's) ← ``config`` ← ``overrides`` ← ``fixed``
    (num_classes, in_chans, img_size, drop rates; None values are skipped).

    When depths or the generation change and no stage_spec is given, the variant's block pattern is regenerated
    for the new depths (``stage_spec_for``: v1 L/S then L/D; DAT++ N/D, stage 4 D only). An unknown argument
    raises ``ValueError`` with the closest known name.
    """
    config, overrides = dict(config or {}), dict(overrides or {})
    if is_timm_cnn(name):  # timm's own arguments; a CNN takes any input size, so img_size is not one of them
        fixed = {k: v for k, v in fixed.items() if v is not None and k != "img_size"}
        return {**config, **overrides, **fixed}
    check_model_arguments(config)
    check_model_arguments(overrides)
    if name in VARIANTS:
        base = model_config(name)
    elif name in PRESETS:
        base = copy.deepcopy(PRESETS[name])
    elif config or overrides:
        base = {}
    else:
        close = difflib.get_close_matches(name, known_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; use one of {', '.join(known_models())} or describe a custom "
            "model with --model-config FILE / --model-kwargs"
        )
    custom = {**config, **overrides}
    kwargs = {**base, **custom, **{k: v for k, v in fixed.items() if v is not None}}
    spec = regenerated_stage_spec(name, kwargs, custom)
    if spec is not None:
        kwargs["stage_spec"] = spec
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def regenerated_stage_spec(name: str, kwargs: Mapping[str, Any], changed: Mapping[str, Any]) -> Optional[list]:
    """The block pattern for ``kwargs``' depths when ``changed`` (what the user gave) alters the depths or the
    generation without a stage_spec of its own — the variant's pattern would no longer fit (``stage_spec_for``:
    v1 L/S then L/D; DAT++ N/D, stage 4 D only); None when the pattern stands."""
    if "stage_spec" in changed or not ({"depths", "generation"} & set(changed)) or is_timm_cnn(name):
        return None
    known = model_config(name) if name in VARIANTS else PRESETS.get(name, {})
    depths = kwargs.get("depths", known.get("depths"))
    if depths is None:
        return None
    return stage_spec_for(list(depths), kwargs.get("generation", known.get("generation", "v1")))


def build_model(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the model: through timm for a registered variant (so it carries its pretrained_cfg) or a timm CNN
    (:func:`is_timm_cnn`), else ``DAT``."""
    if is_timm_cnn(name):
        return timm.create_model(name, pretrained=False, **kwargs)
    check_model_arguments(kwargs)
    if name in VARIANTS:
        return timm.create_model(name, **kwargs)
    return DAT(**kwargs)


def arch_record(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its model."""
    return {"name": name, "kwargs": copy.deepcopy(dict(kwargs))}


def model_from_arch(arch: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a model from a checkpoint's ``arch`` record (``overrides`` win, e.g. another img_size)."""
    kwargs = {**arch["kwargs"], **{k: v for k, v in overrides.items() if v is not None}}
    return build_model(arch["name"], kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``, trainable or not (what the papers' tables count)."""
    return sum(p.numel() for p in model.parameters())


def head_size(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Number of classes of a state_dict's classifier (None without one)."""
    weight = state_dict.get("cls_head.weight")
    return int(weight.shape[0]) if weight is not None else None


def input_channels(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Input channels of a state_dict's stem (None when the file has none)."""
    stem = state_dict.get("patch_proj.0.weight")
    return int(stem.shape[1]) if stem is not None else None
