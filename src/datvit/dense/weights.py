"""Backbone weights for dense models: classification checkpoints (datvit's or the authors'), the backbone part of
the authors' DAT-Detection / DAT-Segmentation checkpoints, and that of datvit's own detectors and segmenters.

The authors' dense checkpoints are mmcv 1.x files: ``{"meta": ..., "state_dict": {"backbone.…", "neck.…",
"rpn_head.…"/"roi_head.…"/"bbox_head.…", "decode_head.…", "auxiliary_head.…"}}`` (docs/dense.md). Their backbone
keys are the classification keys plus ``norms.<i>.norm.weight|bias`` for the stages in out_indices (RetinaNet:
1–3) and without ``cls_norm``/``cls_head``. Reading, prefix stripping and fitting (position tables resized
bicubically, size-dependent buffers rebuilt) reuse ``datvit.models.checkpoint``; the match is strict on every
backbone key. Exceptions, reported and warned about: the classifier of a classification checkpoint (not part of a
backbone), and per-stage output norms of stages only one side outputs (a classification file has none; a
Mask R-CNN file loaded into a RetinaNet has ``norms.0`` too many) — those norms keep their init or are dropped.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from ..models import DAT
from ..models.checkpoint import (
    CheckpointError,
    describe_architecture,
    extract_state_dict,
    fit_state_dict,
    key_mismatches,
    read_checkpoint,
)

_DENSE_PREFIXES = ("backbone.",)
# Where the backbone sits inside datvit's own dense models: a torchvision detector (backbone.body.body[.model]) and
# a Segmenter (net.encoder.model[.model]).
_DATVIT_DENSE_PREFIXES = (
    "backbone.body.body.model.",
    "backbone.body.body.",
    "net.encoder.model.model.",
    "net.encoder.model.",
)
_NORM_KEY = re.compile(r"norms\.(\d+)\.")


@dataclass
class WeightsReport:
    """What ``load_backbone_weights`` did."""

    path: str
    layout: str  # "dense (mmdet/mmseg)", "datvit dense model" or "classification"
    loaded: int = 0  # tensors copied into the backbone
    resized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # file keys that are not the backbone's
    kept_init: list[str] = field(default_factory=list)  # backbone keys the file does not have (norms only)

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.loaded} backbone tensors loaded ({self.layout})"]
        if self.resized:
            parts.append(f"{len(self.resized)} position tables resized")
        if self.ignored:
            parts.append(f"{len(self.ignored)} non-backbone keys ignored")
        if self.kept_init:
            parts.append(f"kept at init: {', '.join(self.kept_init)}")
        return "; ".join(parts)


def find_backbone(model: nn.Module) -> nn.Module:
    """The backbone network inside a DenseBackbone, torchvision detector, Segmenter or bare DAT: the DAT module,
    or the timm feature extractor of a CNN backbone."""
    if isinstance(model, DAT):
        return model
    dat = getattr(model, "dat", None)
    if isinstance(dat, DAT):
        return dat
    for attr in ("backbone", "body"):  # torchvision detector → BackboneWithFPN → DenseBackbone
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return find_backbone(inner)
    net = getattr(model, "net", None)  # Segmenter → smp model → encoder → timm feature extractor
    if net is not None:
        return net.encoder.model
    if hasattr(model, "feature_info"):
        return model
    raise TypeError(f"no backbone found in {type(model).__name__}")


def _split_dense(checkpoint: Any) -> tuple[Any, list[str], str]:
    """For an mmdet/mmseg checkpoint: (its backbone keys only, the other keys, layout); else the checkpoint."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if isinstance(state, Mapping) and any(str(k).startswith(_DENSE_PREFIXES) for k in state):
        backbone = {k: v for k, v in state.items() if str(k).startswith(_DENSE_PREFIXES)}
        others = [k for k in state if not str(k).startswith(_DENSE_PREFIXES)]
        return backbone, others, "dense (mmdet/mmseg)"
    return checkpoint, [], "classification"


def _flattened_key(key: str, own: Mapping[str, Any]) -> str:
    """``key`` of a timm classifier as its ``features_only`` model names it (``stages.0.x`` → ``stages_0.x``)."""
    if key in own:
        return key
    parts = key.split(".")
    flat = "_".join(parts[:2]) + "." + ".".join(parts[2:]) if len(parts) > 2 else key
    return flat if flat in own else key


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = False) -> WeightsReport:
    """Load a classification or dense checkpoint's backbone weights into ``model``'s backbone (module docstring).

    Raises ``CheckpointError`` with one line naming the file and the missing, unexpected and mis-shaped keys.
    """
    path = os.fspath(path)
    backbone = find_backbone(model)
    checkpoint = read_checkpoint(path)
    checkpoint, others, layout = _split_dense(checkpoint)
    state = extract_state_dict(checkpoint, use_ema, source=path)
    report = WeightsReport(path, layout, ignored=list(others))
    own = backbone.state_dict()
    # a datvit detector or segmenter checkpoint: take its backbone
    overlap = len(own.keys() & state.keys())
    for prefix in _DATVIT_DENSE_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if len(own.keys() & sub.keys()) > overlap:
            report.layout = "datvit dense model"
            report.ignored += [k for k in state if not k.startswith(prefix)]
            state, overlap = sub, len(own.keys() & sub.keys())
            break
    is_dat = isinstance(backbone, DAT)
    # the classifier is not part of a backbone
    if is_dat:
        classifier = [k for k in state if k.startswith(("cls_norm.", "cls_head.")) and k not in own]
    else:
        head = str((getattr(backbone, "pretrained_cfg", None) or {}).get("classifier", "fc"))
        classifier = [
            k
            for k in state
            if k not in own and (k.startswith(head + ".") or k.startswith(("fc.", "head.", "classifier.")))
        ]
    for k in classifier:
        del state[k]
    report.ignored += classifier
    if not is_dat:  # timm's feature extractors flatten the top-level sequentials: stages.0.x is stages_0.x there
        state = {_flattened_key(k, own): v for k, v in state.items()}
    if is_dat:
        before = {k: tuple(v.shape) for k, v in state.items()}
        state = fit_state_dict(state, backbone)
        report.resized = [k for k in state if k in before and before[k] != tuple(state[k].shape)]
        # Output norms of stages only one side has. fit_state_dict already filled them from the model when the
        # file has none (a classification checkpoint).
        file_has_norms = any(_NORM_KEY.match(k) for k in before)
        for k in [k for k in state if _NORM_KEY.match(k) and k not in own]:
            del state[k]
            report.ignored.append(k)
        for k in own:
            if _NORM_KEY.match(k) and (k not in state or not file_has_norms):
                state[k] = own[k]
                report.kept_init.append(k)
    differences = key_mismatches(state, own)
    if differences:
        parts = [f"{path} does not match the backbone"]
        if is_dat:
            parts.append(f"(file: {describe_architecture(state)}; model: {describe_architecture(own)})")
        raise CheckpointError("; ".join(parts + differences))
    backbone.load_state_dict(state, strict=True)
    report.loaded = len(state) - len([k for k in report.kept_init if k in state])
    if report.kept_init and layout != "classification":
        warnings.warn(
            f"{path}: per-stage norms {report.kept_init} are not in the file and keep their init", stacklevel=2
        )
    return report
