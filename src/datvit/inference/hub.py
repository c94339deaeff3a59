"""Weights for sharing: ``model.safetensors`` + a timm-style ``config.json`` in one directory — the layout of timm
models on the Hugging Face hub, which ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=".../model.safetensors"), **config["model_args"])`` and
``datvit.inference.load_model(DIR)`` both read.

``config.json`` holds timm's keys — ``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
``model_args`` (the complete ``DAT`` arguments, so custom configurations rebuild), ``pretrained_cfg`` (input_size,
mean, std, crop_pct, crop_mode, interpolation, first_conv, classifier, ...), ``label_names`` when known — plus a
``datvit`` entry with the ``arch`` record and the checkpoint format version. A preset or custom model (not a
timm name) is written with the registered variant of its generation as ``architecture``: timm builds the same
network from it, because ``model_args`` sets every constructor argument.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..models.checkpoint import CheckpointError
from ..models.registry import VARIANTS
from ..utils.files import atomic_write_text
from .checkpoint_format import FORMAT_VERSION

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def hub_config(
    arch: Mapping[str, Any],
    data_config: Mapping[str, Any],
    model: torch.nn.Module,
    class_names: Optional[list[str]] = None,
) -> dict[str, Any]:
    """The ``config.json`` dict for a model built from ``arch`` and preprocessed with ``data_config``."""
    kwargs = _jsonable(dict(arch["kwargs"]))
    name = arch["name"]
    if name not in VARIANTS:
        name = "datpp_tiny" if kwargs.get("generation", "v1") == "pp" else "dat_tiny"
    pretrained_cfg = {
        "tag": "datvit",
        "custom_load": False,
        "input_size": list(data_config["input_size"]),
        "fixed_input_size": False,
        "interpolation": data_config.get("interpolation", "bicubic"),
        "crop_pct": data_config.get("crop_pct", 0.875),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "num_classes": int(model.num_classes),
        "pool_size": [s // 32 for s in data_config["input_size"][1:]],
        "first_conv": "patch_proj.0",
        "classifier": "cls_head",
    }
    config = {
        "architecture": name,
        "num_classes": int(model.num_classes),
        "num_features": int(model.num_features),
        "global_pool": getattr(model, "global_pool", "avg"),
        "model_args": kwargs,
        "pretrained_cfg": pretrained_cfg,
        "datvit": {"arch": {"name": arch["name"], "kwargs": kwargs}, "format_version": FORMAT_VERSION},
    }
    if class_names:
        config["label_names"] = list(class_names)
    return config


def save_hub_directory(
    directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    try:
        save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_text(json.dumps(config, indent=2) + "\n", config_path)
    return weights, config_path


def find_hub_files(path: str | os.PathLike) -> Optional[tuple[Path, Path]]:
    """``(weights, config.json)`` when ``path`` is a hub directory, its ``config.json`` or its
    ``model.safetensors`` with a ``config.json`` beside it; None otherwise."""
    path = Path(path)
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            raise CheckpointError(
                f"{path} is a directory without {CONFIG_NAME}: give a checkpoint file, or a "
                f"directory written by datvit convert ({WEIGHTS_NAME} + {CONFIG_NAME})"
            )
        return path / WEIGHTS_NAME, config
    if path.name == CONFIG_NAME:
        return path.with_name(WEIGHTS_NAME), path
    if path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file():
        return path, path.parent / CONFIG_NAME
    return None


def read_hub_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` checked: a JSON object with ``architecture`` (or datvit's ``arch``) and valid entries."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object (timm's config.json), found {type(config).__name__}")
    if not isinstance(config.get("architecture"), str) and not isinstance(config.get("datvit"), dict):
        raise CheckpointError(f"{path} names no 'architecture' (timm's config.json key)")
    for key, kind in (("model_args", dict), ("pretrained_cfg", dict), ("label_names", list), ("datvit", dict)):
        if key in config and not isinstance(config[key], kind):
            raise CheckpointError(f"{path}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    return config


def arch_from_hub_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``arch`` record a ``config.json`` describes (datvit's own entry first, else timm's keys)."""
    arch = (config.get("datvit") or {}).get("arch")
    if isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("kwargs"), dict):
        return {"name": arch["name"], "kwargs": dict(arch["kwargs"])}
    name = config.get("architecture")
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: config.json names no 'architecture'")
    name = name.split("/")[-1].split(".")[0]  # "timm/dat_tiny.in1k" → "dat_tiny"
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config and "num_classes" not in kwargs:
        kwargs["num_classes"] = config["num_classes"]
    return {"name": name, "kwargs": kwargs}


def data_config_from_hub_config(config: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    cfg = config.get("pretrained_cfg") or {}
    if "input_size" not in cfg:
        return None
    keys = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")
    return {k: cfg[k] for k in keys if k in cfg}
