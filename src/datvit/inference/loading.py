"""A model and its preprocessing from any checkpoint: ``load_model`` → ``LoadedModel``, and ``eval_transform``.

What it reads (``load_model(checkpoint, model=...)``):

* a datvit checkpoint (``last.pth``, ``best.pth``): the model is rebuilt from its ``arch`` record — no ``model``
  needed — with its data config (resolution, mean/std, crop) and class names;
* the authors' ``.pth`` (a dict with ``"model"``, their training checkpoints with a pickled yacs config) or a bare
  state_dict / ``.safetensors``: ``model`` names the variant (or a preset, or ``model_kwargs`` describe it); the
  class count and input channels are read from the weights; preprocessing is the variant's pretrained config
  (ImageNet mean/std, bicubic, crop 0.875, as the papers evaluate);
* a ``datvit convert`` directory (``model.safetensors`` + ``config.json``), the directory or either file.

``img_size`` / ``num_classes`` / ``in_chans`` override what the file says (position tables are resized to another
``img_size``). Loading is strict (``datvit.load_checkpoint``'s checks) and executes nothing from the file unless
``trust_checkpoint=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data import resolve_data_config as timm_resolve_data_config
from torch import nn

from ..data.loader import eval_transform as eval_transform  # re-exported: the preprocessing of a LoadedModel
from ..models.checkpoint import CheckpointError, load_state_dict_checked
from ..models.factory import (
    build_model,
    check_model_arguments,
    head_size,
    input_channels,
    model_from_arch,
    resolve_model_kwargs,
)
from .checkpoint_format import DatvitCheckpoint, parse_checkpoint, read_datvit_checkpoint
from .hub import arch_from_hub_config, data_config_from_hub_config, find_hub_files, read_hub_config


@dataclass
class LoadedModel:
    """A model ready for inference and what it needs around it."""

    model: nn.Module  # in eval mode, on CPU
    data_config: dict[str, Any]  # timm-style: input_size (C, H, W), mean, std, crop_pct, interpolation
    class_names: Optional[list[str]]
    arch: Optional[dict[str, Any]]  # {"name": ..., "kwargs": {...}}: what rebuilds the model
    source: str  # the file it came from
    checkpoint: Optional[DatvitCheckpoint] = None  # the file's contents (training state of datvit checkpoints)

    @property
    def name(self) -> str:
        return self.arch["name"] if self.arch else type(self.model).__name__

    @property
    def image_mode(self) -> str:
        """The PIL mode images are decoded to: 'L' for one-channel models, else 'RGB'."""
        return "L" if int(self.data_config["input_size"][0]) == 1 else "RGB"


def _read(checkpoint: str, use_ema: bool, trust_checkpoint: bool) -> tuple[DatvitCheckpoint, Optional[dict]]:
    """The checkpoint's contents, and the config.json of a hub directory (None otherwise)."""
    hub = find_hub_files(checkpoint)
    if hub is None:
        return read_datvit_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint), None
    weights, config_path = hub
    config = read_hub_config(config_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{config_path.parent} has {config_path.name} but no {weights.name}")
    from ..models.checkpoint import read_checkpoint

    contents = parse_checkpoint(read_checkpoint(weights), str(weights))
    arch = arch_from_hub_config(config, str(config_path))
    names = config.get("label_names")
    return DatvitCheckpoint(
        str(weights),
        contents.model,
        arch=arch,
        data_config=data_config_from_hub_config(config),
        class_names=list(names) if names else None,
        format_version=(config.get("datvit") or {}).get("format_version"),
    ), config


def resolve_data_config(
    base: Optional[Mapping[str, Any]],
    model: nn.Module,
    img_size: Optional[int] = None,
    crop_pct: Optional[float] = None,
    interpolation: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> dict[str, Any]:
    """Preprocessing for ``model``: ``base`` (a checkpoint's data config) or the model's pretrained config
    (ImageNet defaults, as the papers evaluate), then the given overrides; mean/std fitted to the channel count
    (a grey model gets the channels' average)."""
    base_cfg = dict(base or {})
    if not base_cfg:
        base_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        base_cfg.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        base_cfg.setdefault("std", IMAGENET_DEFAULT_STD)
        base_cfg.setdefault("crop_pct", 0.875)
        base_cfg.setdefault("interpolation", "bicubic")
        base_cfg["input_size"] = (model.in_chans, model.img_size, model.img_size)
    overrides = {
        "in_chans": model.in_chans,
        "img_size": img_size,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "mean": mean,
        "std": std,
    }
    if img_size is None:
        overrides["input_size"] = (model.in_chans, *tuple(base_cfg["input_size"])[1:])
    config = timm_resolve_data_config(args=overrides, pretrained_cfg=base_cfg)
    for key in ("mean", "std"):
        values = tuple(float(v) for v in config[key])
        if len(values) != model.in_chans:
            if model.in_chans != 1:
                raise ValueError(
                    f"the {key} has {len(values)} values for a {model.in_chans}-channel model: "
                    f"give {model.in_chans} values"
                )
            values = (sum(values) / len(values),)
        config[key] = values
    size = tuple(int(s) for s in config["input_size"])
    if min(size[1:]) < getattr(model, "min_input_size", 0):
        raise ValueError(f"image size {size[1]}×{size[2]} is below this model's minimum input {model.min_input_size}")
    config["input_size"] = size
    return config


def load_model(
    checkpoint: str | os.PathLike | None = None,
    model: str | None = None,
    *,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    img_size: Optional[int] = None,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    use_ema: bool = False,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """The model a checkpoint holds, in eval mode on CPU, with its preprocessing and class names.

    ``model`` is needed only for files that do not record their architecture (the authors' ``.pth``, bare
    state_dicts); given with a datvit checkpoint it wins over the recorded one. Raises ``CheckpointError`` (the
    file cannot be read or does not fit) or ``ValueError`` (bad arguments), one line each.
    """
    if checkpoint is None:
        if model is None:
            raise ValueError("give a checkpoint, a model name, or both")
        kwargs = resolve_model_kwargs(
            model, None, model_kwargs, num_classes=num_classes, in_chans=in_chans, img_size=img_size
        )
        net = build_model(model, kwargs).eval()
        return LoadedModel(net, resolve_data_config(None, net), None, {"name": model, "kwargs": kwargs}, model)
    source = os.fspath(checkpoint)
    if model_kwargs:
        check_model_arguments(model_kwargs)
    contents, _ = _read(source, use_ema, trust_checkpoint)
    state = contents.state_dict(use_ema)
    fixed = dict(
        num_classes=num_classes or head_size(state), in_chans=in_chans or input_channels(state), img_size=img_size
    )
    if contents.arch is not None and model is None:
        arch = {
            "name": contents.arch["name"],
            "kwargs": {
                **contents.arch["kwargs"],
                **dict(model_kwargs or {}),
                **{k: v for k, v in fixed.items() if v is not None},
            },
        }
        try:
            net = model_from_arch(arch)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: its recorded architecture cannot be built ({e})") from e
    elif model is not None:
        kwargs = resolve_model_kwargs(model, None, model_kwargs, **fixed)
        arch = {"name": model, "kwargs": kwargs}
        net = build_model(model, kwargs)
    else:
        raise CheckpointError(
            f"{source} does not record its architecture (the authors' file or a bare state_dict): "
            "pass --model NAME (Python: model=NAME), e.g. --model dat_tiny"
        )
    load_state_dict_checked(net, state, contents.source, reset_head_on_mismatch=False)
    net.eval()
    data_config = resolve_data_config(
        contents.data_config if img_size is None or contents.data_config is None else {**contents.data_config},
        net,
        img_size=img_size,
    )
    return LoadedModel(net, data_config, contents.class_names, arch, source, contents)
