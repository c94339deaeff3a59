"""Reading checkpoints (ours and the authors') and fitting them to a model.

The authors' ``.pth`` files are dicts with a ``"model"`` state_dict (training checkpoints also pickle their yacs
config, so they need ``weights_only=False``); datvit's checkpoints are dicts with ``"model"`` too; bare
state_dicts and ``.safetensors`` files work as well. Loading is strict: every key of the model must be in the
file and vice versa, except the size-dependent buffers (rebuilt), the position tables (resized bicubically, as the
authors' loader does, when the model was built for another size) and the per-stage norms of the dense-prediction
backbones (kept at their init when the file is a classification checkpoint).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import nn

_logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_REBUILT_BUFFERS = ("relative_position_index", "attn_mask")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be read or does not fit the model; the message says which keys or file."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) into Python objects on CPU."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
        warnings.warn(f"{path} pickles Python objects besides tensors (e.g. the authors' training config); "
                      "loading it with weights_only=False — only do this with files you trust", stacklevel=3)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any failure of an arbitrary pickle
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e


def extract_state_dict(checkpoint: Any, use_ema: bool = False, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state_dict inside a checkpoint object, with wrapper prefixes (DDP, compile, mmdet) removed."""
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        keys = (["model_ema", "state_dict_ema"] if use_ema else []) + ["model", "state_dict"]
        for key in keys:
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} holds no state_dict (expected a dict of tensors, or a dict with 'model')")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def resize_relative_position_table(table: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Swin-style ((2w−1)², heads) table → (num_rows, heads), bicubic on the (2w−1)×(2w−1) grid."""
    n, heads = table.shape
    side, new_side = int(round(n ** 0.5)), int(round(num_rows ** 0.5))
    grid = table.T.reshape(1, heads, side, side).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new_side * new_side).T.to(table.dtype)


def resize_position_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(heads, H, W) table → (heads, *size), bicubic (the authors' loader does this for ``rpe_table``)."""
    out = F.interpolate(table.unsqueeze(0).float(), size=size, mode="bicubic", align_corners=False)
    return out.squeeze(0).to(table.dtype)


def fit_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a DAT state_dict to ``model`` (timm's ``pretrained_filter_fn``).

    Rebuilds size-dependent buffers, resizes position tables to the model's, fills the per-stage dense norms from
    the model when the file has none (and drops them when the model has none). Keys are otherwise untouched, so a
    file of another variant still fails the strict load with its mismatching keys named.
    """
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key not in own:
            continue
        target = own[key]
        if key.endswith(_REBUILT_BUFFERS):
            out[key] = target
        elif value.shape == target.shape:
            continue
        elif key.endswith("relative_position_bias_table") and value.ndim == 2 and value.shape[1] == target.shape[1]:
            out[key] = resize_relative_position_table(value, target.shape[0])
        elif key.endswith(("rpe_table", ".rpb")) and value.ndim == 3 and value.shape[0] == target.shape[0]:
            out[key] = resize_position_table(value, tuple(target.shape[1:]))
        elif key == "patch_proj.0.weight" and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            # another number of input channels (e.g. grayscale): timm's adaptation of the first conv
            out[key] = adapt_input_conv(target.shape[1], value)
    has_norms = any(k.startswith("norms.") for k in own)
    file_norms = [k for k in out if k.startswith("norms.")]
    if has_norms and not file_norms:
        _logger.info("checkpoint has no per-stage norms (a classification checkpoint): they keep their init")
        out.update({k: v for k, v in own.items() if k.startswith("norms.")})
    elif file_norms and not has_norms:
        for k in file_norms:
            del out[k]
    if not any(k.startswith("cls_") for k in out) and any(k.startswith("cls_") for k in own):
        warnings.warn("checkpoint has no classifier (a detection/segmentation backbone): cls_norm and cls_head "
                      "keep their init", stacklevel=3)
        out.update({k: v for k, v in own.items() if k.startswith("cls_")})
    return out


def describe_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short description (family, dims, depths) inferred from keys, to say what a mismatching file holds."""
    depths: dict[int, int] = {}
    for key in state_dict:
        m = re.match(r"stages\.(\d+)\.attns\.(\d+)\.", key)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    dims = [state_dict[k].shape[0] for k in sorted(state_dict) if re.fullmatch(r"stages\.\d+\.layer_norms\.0\.norm\.weight", k)]
    family = "DAT++" if any(".local_perception_units." in k or ".rpb" in k for k in state_dict) else "DAT v1"
    head = state_dict.get("cls_head.weight")
    classes = f", {head.shape[0]} classes" if head is not None else ""
    return f"{family}, depths {[depths[i] for i in sorted(depths)]}, dims {dims}{classes}"


def _format_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    use_ema: bool = False,
    strict: bool = True,
    reset_head_on_mismatch: bool = True,
) -> nn.Module:
    """Load a DAT checkpoint (datvit's, the authors' ``.pth``, a bare state_dict or ``.safetensors``) into ``model``.

    Strict by default: a file of another variant raises ``CheckpointError`` naming the missing, unexpected and
    mis-shaped keys. When only the classifier differs in size (fine-tuning on another dataset), the head keeps
    its fresh init and a warning says so. Returns the model.
    """
    checkpoint = read_checkpoint(path)
    state = fit_state_dict(extract_state_dict(checkpoint, use_ema, source=os.fspath(path)), model)
    own = model.state_dict()
    head_keys = [k for k in ("cls_head.weight", "cls_head.bias") if k in own and k in state]
    if reset_head_on_mismatch and head_keys and any(state[k].shape != own[k].shape for k in head_keys):
        warnings.warn(f"{os.fspath(path)}: classifier has {state['cls_head.weight'].shape[0]} classes, the model "
                      f"{own['cls_head.weight'].shape[0]}; the head is re-initialised", stacklevel=2)
        for k in head_keys:
            state[k] = own[k]
    if "cls_head.weight" not in own:  # model without a classifier (num_classes=0 / features)
        for k in ("cls_head.weight", "cls_head.bias"):
            state.pop(k, None)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        parts = [f"{os.fspath(path)} does not match the model"]
        parts.append(f"file: {describe_architecture(state)}; model: {describe_architecture(own)}")
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}; file vs model): {_format_keys(mismatched)}")
        raise CheckpointError("\n  ".join(parts))
    if not strict:
        state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(state, strict=strict)
    return model
