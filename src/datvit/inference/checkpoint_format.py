"""The datvit checkpoint format: what a datvit checkpoint holds, built and read in this one module.

A datvit checkpoint is a ``torch.save`` dict (timm's training-checkpoint keys, plus what rebuilds the model):

* what inference needs — ``model`` (state_dict), ``model_ema`` (state_dict or None), ``arch`` (``{"name",
  "kwargs"}``: what rebuilds the model, custom configurations included), ``data_config`` (timm-style: input_size,
  mean, std, crop_pct, interpolation), ``class_names`` (list or None);
* ``format_version`` (``FORMAT_VERSION``) and ``datvit_version``;
* whatever training adds to resume exactly (``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``,
  ``rng``, ``data_state``, ``args``, ...): ``train/engine.py`` passes it as ``training`` and gets it back in
  ``DatvitCheckpoint.training``; this module does not interpret it.

Files written before ``format_version`` existed (datvit 0.1.0 runs) are the same dict without it: they read as
version 0. A file without ``arch`` is not a datvit checkpoint (the authors' ``.pth``, a bare state_dict):
``DatvitCheckpoint.is_datvit`` is False and its weights are still available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from ..models.checkpoint import CheckpointError, extract_state_dict, read_checkpoint

FORMAT_VERSION = 1
# The keys this module owns; ``training`` may not use them.
MODEL_KEYS = ("format_version", "datvit_version", "model", "model_ema", "arch", "data_config", "class_names")


def build_checkpoint(
    model_state: Mapping[str, torch.Tensor],
    *,
    arch: Optional[Mapping[str, Any]],
    data_config: Optional[Mapping[str, Any]] = None,
    class_names: Optional[list[str]] = None,
    model_ema: Optional[Mapping[str, torch.Tensor]] = None,
    training: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The dict a datvit checkpoint file holds (``torch.save`` it, e.g. with ``datvit.utils.files.atomic_save``)."""
    from .. import __version__

    training = dict(training or {})
    clash = sorted(set(training) & set(MODEL_KEYS))
    if clash:
        raise ValueError(f"training state may not use the checkpoint's own keys: {', '.join(clash)}")
    return {
        "format_version": FORMAT_VERSION,
        "datvit_version": __version__,
        "model": dict(model_state),
        "model_ema": dict(model_ema) if model_ema is not None else None,
        "arch": {"name": arch["name"], "kwargs": dict(arch["kwargs"])} if arch is not None else None,
        "data_config": dict(data_config) if data_config is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        **training,
    }


@dataclass(frozen=True)
class DatvitCheckpoint:
    """A checkpoint file read back: datvit's (``is_datvit``) or any other file holding DAT weights."""

    source: str
    model: dict[str, torch.Tensor]
    model_ema: Optional[dict[str, torch.Tensor]] = None
    arch: Optional[dict[str, Any]] = None
    data_config: Optional[dict[str, Any]] = None
    class_names: Optional[list[str]] = None
    format_version: Optional[int] = None  # None: not a datvit checkpoint; 0: datvit before versioning
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def is_datvit(self) -> bool:
        return self.format_version is not None

    def state_dict(self, use_ema: bool = False) -> dict[str, torch.Tensor]:
        """The weights to load; ``use_ema`` asks for the EMA weights, which must be there."""
        if not use_ema:
            return self.model
        if self.model_ema is None:
            raise CheckpointError(f"{self.source} holds no EMA weights (trained without --model-ema)")
        return self.model_ema


def _check_arch(arch: Any, source: str) -> Optional[dict[str, Any]]:
    if arch is None:
        return None
    if not (
        isinstance(arch, Mapping) and isinstance(arch.get("name"), str) and isinstance(arch.get("kwargs"), Mapping)
    ):
        raise CheckpointError(
            f"{source}: its 'arch' entry is malformed (expected {{'name': str, 'kwargs': dict}}, "
            f"found {type(arch).__name__})"
        )
    return {"name": arch["name"], "kwargs": dict(arch["kwargs"])}


def parse_checkpoint(obj: Any, source: str) -> DatvitCheckpoint:
    """Interpret a loaded checkpoint object (``read_checkpoint``'s result)."""
    source = os.fspath(source)
    ours = (
        isinstance(obj, Mapping)
        and isinstance(obj.get("model"), Mapping)
        and ("format_version" in obj or "arch" in obj)
    )
    if not ours:
        ema = None
        if isinstance(obj, Mapping) and isinstance(obj.get("model_ema") or obj.get("state_dict_ema"), Mapping):
            ema = extract_state_dict(obj, use_ema=True, source=source)
        return DatvitCheckpoint(source, extract_state_dict(obj, source=source), model_ema=ema)
    version = obj.get("format_version", 0)
    if not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{source}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} was written in checkpoint format {version}, newer than this datvit reads "
            f"({FORMAT_VERSION}): upgrade datvit"
        )
    arch = obj.get("arch")
    if isinstance(arch, str):  # early files recorded only a name
        arch = None
    model = extract_state_dict(obj, source=source)
    ema = obj.get("model_ema")
    model_ema = (
        extract_state_dict({"model": ema}, source=f"{source} (EMA)") if isinstance(ema, Mapping) and ema else None
    )
    names = obj.get("class_names")
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{source}: its 'class_names' entry is not a list of strings")
    data_config = obj.get("data_config")
    if data_config is not None and not isinstance(data_config, Mapping):
        raise CheckpointError(f"{source}: its 'data_config' entry is not a mapping")
    return DatvitCheckpoint(
        source,
        model,
        model_ema=model_ema,
        arch=_check_arch(arch, source),
        data_config=dict(data_config) if data_config is not None else None,
        class_names=list(names) if names is not None else None,
        format_version=version,
        training={k: v for k, v in obj.items() if k not in MODEL_KEYS},
    )


def read_datvit_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False) -> DatvitCheckpoint:
    """Read any checkpoint file holding DAT weights (nothing in it runs unless ``trust_checkpoint``)."""
    return parse_checkpoint(read_checkpoint(path, trust_checkpoint=trust_checkpoint), os.fspath(path))


def describe_arch_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> Optional[str]:
    """``None`` when two ``arch`` records build the same network, else what differs (for one-line errors).
    Regularisation (drop rates) does not change the weights' layout and is ignored."""
    ignored = {"drop_path_rate", "drop_rate", "attn_drop_rate", "proj_drop_rate"}
    a, b = dict(saved.get("kwargs", {})), dict(current.get("kwargs", {}))
    diffs = [
        f"{k} {a.get(k)!r} vs {b.get(k)!r}"
        for k in sorted((set(a) | set(b)) - ignored)
        if k not in ignored and _norm(a.get(k)) != _norm(b.get(k))
    ]
    if saved.get("name") != current.get("name") and diffs:
        diffs.insert(0, f"model {saved.get('name')!r} vs {current.get('name')!r}")
    return "; ".join(diffs) if diffs else None


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value
