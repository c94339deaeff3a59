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
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import nn

_logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_REBUILT_BUFFERS = ("relative_position_index", "attn_mask")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be read or does not fit the model; the message says which keys or file."""


# Pickled globals that are data, not code, in checkpoints users meet: the authors' training checkpoints pickle
# their yacs config (``config``, a dict subclass), timm's train.py pickles its ``args`` (an argparse Namespace).
# They are rebuilt as the inert stand-ins below; nothing of yacs or argparse runs.
class InertConfig(dict):
    """What a pickled ``yacs.config.CfgNode`` becomes: its keys and values as a dict; its attributes ignored."""

    def __setstate__(self, state: Any) -> None:  # CfgNode's __dict__ (immutability flags): not needed
        pass


class InertNamespace:
    """What a pickled ``argparse.Namespace`` becomes: its attributes, nothing else."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


INERT_GLOBALS: dict[str, type] = {"yacs.config.CfgNode": InertConfig, "argparse.Namespace": InertNamespace}
_TRUST_HINT = "trust_checkpoint=True (CLI: --trust-checkpoint)"


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    line = text[0].strip() if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def _describe_foreign_bytes(head: bytes) -> str:
    """What a file that is neither zip, pickle nor safetensors holds, for the error message."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.strip() and all(c.isprintable() or c in "\r\n\t" for c in text[:256]):
        snippet = " ".join(text.split())[:60]
        more = "…" if len(" ".join(text.split())) > 60 else ""
        kind = "HTML" if snippet.lower().startswith(("<!doctype html", "<html")) else "text"
        return f"it holds {kind}, starting {snippet + more!r} (a failed download?)"
    return (
        f"it starts with bytes {head[:8].hex(' ')}, which are neither a zip archive (torch.save), a pickle nor "
        "a safetensors header"
    )


def _sniff(path: str) -> tuple[str, bytes]:
    """The kind of checkpoint file by its first bytes: 'empty', 'zip', 'pickle', 'safetensors' or 'other'."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty", head
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip", head
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors", head
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5 (torch's legacy format)
        return "pickle", head
    return "other", head


def _is_torchscript(path: str) -> bool:
    """A torch.jit.save archive holds compiled code (``<name>/code/``) and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # truncated: torch.load says so below
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _InertUnpickler(pickle.Unpickler):
    """Resolves only the globals torch's weights-only loader allows (tensor rebuilders, OrderedDict, ...) plus
    the inert stand-ins of ``INERT_GLOBALS``; any other global is refused before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        import _compat_pickle

        from torch._weights_only_unpickler import _get_allowed_globals

        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles name Python 2 modules
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in INERT_GLOBALS:
            return INERT_GLOBALS[full]
        allowed = _get_allowed_globals()
        if full in allowed:
            return allowed[full]
        raise pickle.UnpicklingError(f"global {full} is not allowed")


class _InertPickleModule:
    """A ``pickle_module`` for ``torch.load`` whose unpickler executes nothing (see ``_InertUnpickler``)."""

    __name__ = "datvit_inert_pickle"
    Unpickler = _InertUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _InertUnpickler(file, **kwargs).load()


def _unsafe_globals(path: str, kind: str, error: BaseException) -> list[str]:
    """The globals a torch.save file pickles beyond the weights-only allowlist (static disassembly; nothing runs)."""
    if kind == "zip":
        try:
            return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
        except Exception:
            pass
    m = re.search(r"GLOBAL ([\w.]+)", str(error)) or re.search(r"global ([\w.]+)", str(error))
    return [m[1]] if m else []


def read_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False) -> Any:
    """Load a checkpoint file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) into Python objects on CPU.

    Nothing in the file is executed unless ``trust_checkpoint=True``: tensors and plain containers load with
    ``torch.load(weights_only=True)``; the configs the authors' and timm's training checkpoints pickle
    (``INERT_GLOBALS``) are rebuilt as inert stand-ins by an unpickler that resolves no other global; any other
    pickled global (e.g. ``posix.system`` in a hostile file) is refused, naming it. Files that are not checkpoints
    at all (empty, a text or HTML page saved as ``.pth`` after a failed download, random bytes, truncated) raise
    ``CheckpointError`` saying what the file holds, in one line.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        kind, head = _sniff(path)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from e
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted download or copy?)")
    if kind == "safetensors" or (path.endswith(".safetensors") and kind == "other"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (corrupt or truncated?): {_first_line(e)}"
            ) from e
    if kind == "other":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_describe_foreign_bytes(head)}")
    if kind == "zip" and _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint: its weights are "
            "torch.jit.load(path).state_dict()"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path, kind, e)
        if not unsafe:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {_first_line(e)}"
            ) from e
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
        MemoryError,
        OverflowError,
    ) as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {_first_line(e)}"
        ) from e
    if trust_checkpoint:
        warnings.warn(
            f"{path} pickles Python objects besides tensors ({', '.join(unsafe)}); loading it with "
            "weights_only=False because the file is trusted (this runs code the file names)",
            stacklevel=3,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # any failure of an arbitrary pickle
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from e
    code = [g for g in unsafe if g not in INERT_GLOBALS]
    if code:
        raise CheckpointError(
            f"{path} pickles Python objects that loading would have to import or call ({', '.join(code)}); "
            f"refused, nothing was executed. Only if you trust the file, load it with {_TRUST_HINT}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)
    except Exception as e:  # the stand-ins could not rebuild it: say what is inside, run nothing else
        raise CheckpointError(
            f"{path} pickles {', '.join(unsafe)} in a form datvit cannot read without running "
            f"code ({_first_line(e)}); only if you trust the file, load it with {_TRUST_HINT}"
        ) from e


def _describe_object(obj: Any) -> str:
    """A short description of what a checkpoint object is (for messages)."""
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:6]]
        more = ", …" if len(obj) > 6 else ""
        return f"a dict with keys {', '.join(keys)}{more}" if keys else "an empty dict"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    return f"a {type(obj).__name__}"


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
        raise CheckpointError(
            f"{source} holds no state_dict: expected a dict of tensors or a dict with 'model', "
            f"found {_describe_object(checkpoint)}"
        )
    # "backbone." is mmdet's place for the backbone, stripped from a file of backbone keys only; in a whole
    # detector (datvit's own: backbone, rpn, roi_heads) it is part of every backbone key's name.
    only_backbone = all(str(k).startswith("backbone.") for k in state)
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix) and (prefix != "backbone." or only_backbone):
                key = key[len(prefix) :]
        out[key] = value
    return out


def resize_relative_position_table(table: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Swin-style ((2w−1)², heads) table → (num_rows, heads), bicubic on the (2w−1)×(2w−1) grid."""
    n, heads = table.shape
    side, new_side = int(round(n**0.5)), int(round(num_rows**0.5))
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
        warnings.warn(
            "checkpoint has no classifier (a detection/segmentation backbone): cls_norm and cls_head keep their init",
            stacklevel=3,
        )
        out.update({k: v for k, v in own.items() if k.startswith("cls_")})
    return out


def describe_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short description (family, dims, depths) inferred from keys, to say what a mismatching file holds."""
    depths: dict[int, int] = {}
    for key in state_dict:
        m = re.match(r"stages\.(\d+)\.attns\.(\d+)\.", key)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    dims = [
        state_dict[k].shape[0]
        for k in sorted(state_dict)
        if re.fullmatch(r"stages\.\d+\.layer_norms\.0\.norm\.weight", k)
    ]
    family = "DAT++" if any(".local_perception_units." in k or ".rpb" in k for k in state_dict) else "DAT v1"
    head = state_dict.get("cls_head.weight")
    classes = f", {head.shape[0]} classes" if head is not None else ""
    return f"{family}, depths {[depths[i] for i in sorted(depths)]}, dims {dims}{classes}"


def _format_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def key_mismatches(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """What differs between a file's state_dict and a model's, as message parts (empty when they match): missing
    and unexpected keys and shape mismatches, each with a count and the first few names. Shared by the model
    loader below and the dense backbone loader (``datvit.dense.weights``)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches ({len(mismatched)}; file vs model): {_format_keys(mismatched)}")
    return parts


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    strict: bool = True,
    reset_head_on_mismatch: bool = True,
) -> nn.Module:
    """Fit ``state_dict`` to ``model`` and load it strictly; a mismatch raises one ``CheckpointError`` line naming
    ``source``, what the file and the model are (family, depths, dims) and the missing, unexpected and
    mis-shaped keys (instead of ``load_state_dict``'s dump of every key)."""
    state = fit_state_dict(state_dict, model)
    own = model.state_dict()
    head_keys = [k for k in ("cls_head.weight", "cls_head.bias") if k in own and k in state]
    other_classes = head_keys and state["cls_head.weight"].shape[0] != own["cls_head.weight"].shape[0]
    if reset_head_on_mismatch and other_classes and all(state[k].shape[1:] == own[k].shape[1:] for k in head_keys):
        warnings.warn(
            f"{source}: classifier has {state['cls_head.weight'].shape[0]} classes, the model "
            f"{own['cls_head.weight'].shape[0]}; the head is re-initialised",
            stacklevel=3,
        )
        for k in head_keys:
            state[k] = own[k]
    if "cls_head.weight" not in own:  # model without a classifier (num_classes=0 / features)
        for k in ("cls_head.weight", "cls_head.bias"):
            state.pop(k, None)
    differences = key_mismatches(state, own)
    if strict and differences:
        raise CheckpointError(
            "; ".join(
                [
                    f"{source} does not match the model: file {describe_architecture(state)}, "
                    f"model {describe_architecture(own)}"
                ]
                + differences
            )
        )
    if not strict:
        state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(state, strict=strict)
    return model


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    use_ema: bool = False,
    strict: bool = True,
    reset_head_on_mismatch: bool = True,
    trust_checkpoint: bool = False,
) -> nn.Module:
    """Load a DAT checkpoint (datvit's, the authors' ``.pth``, a bare state_dict or ``.safetensors``) into ``model``.

    Strict by default: a file of another variant raises ``CheckpointError`` naming the missing, unexpected and
    mis-shaped keys. When only the classifier differs in size (fine-tuning on another dataset), the head keeps
    its fresh init and a warning says so. Nothing in the file is executed unless ``trust_checkpoint=True`` (see
    ``read_checkpoint``). Returns the model.
    """
    checkpoint = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    state = extract_state_dict(checkpoint, use_ema, source=os.fspath(path))
    return load_state_dict_checked(model, state, os.fspath(path), strict, reset_head_on_mismatch)
