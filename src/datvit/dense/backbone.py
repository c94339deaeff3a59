"""``DenseBackbone``: the stage outputs of a DAT/DAT++ (or a timm CNN) as a dict of maps for detectors.

DAT is built by timm with ``features_only=True``, which gives each stage output its own LayerNorm (``norms.<i>``),
as the authors' detection/segmentation backbones. Stages not in ``out_indices`` get no norm (no keys), as the
authors' RetinaNet backbone, which has ``norms.1``–``norms.3`` only (``docs/dense.md``), so their checkpoints load
strictly. A timm CNN (``resnet18``, ``convnext_atto``, …) goes through the same builder: its feature levels at
strides 4, 8, 16, 32 are stages 0–3.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import timm
import torch
from torch import nn

from ..models import DAT, VARIANTS
from .config import BackboneConfig
from .weights import load_backbone_weights

STAGE_STRIDES = (4, 8, 16, 32)


def _timm_feature_indices(name: str, kwargs: dict) -> list[int]:
    """timm feature indices of the levels at strides 4, 8, 16, 32 (ResNets also have a stride-2 level)."""
    if name.split(".")[0] in VARIANTS:
        return [0, 1, 2, 3]  # DAT's four stages are its feature levels (strides patch × 1, 2, 4, 8)
    try:
        with torch.device("meta"):  # no memory, no init
            probe = timm.create_model(name, features_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - models whose init reads tensor values cannot be built on meta
        probe = timm.create_model(name, features_only=True, **kwargs)
    reductions = list(probe.feature_info.reduction())
    missing = [s for s in STAGE_STRIDES if s not in reductions]
    if missing:
        raise ValueError(
            f"backbone {name!r} has feature levels at strides {reductions}; a dense backbone needs "
            f"4, 8, 16 and 32 (missing {missing})"
        )
    return [reductions.index(s) for s in STAGE_STRIDES]


def dat_of(features: nn.Module) -> Optional[DAT]:
    """The DAT inside a timm feature extractor (``FeatureGetterNet.model``), or None for other backbones."""
    inner = getattr(features, "model", None)
    return inner if isinstance(inner, DAT) else None


def set_grad_checkpointing(features: nn.Module, enable: bool = True) -> None:
    dat = dat_of(features)
    (dat if dat is not None else features).set_grad_checkpointing(enable)


def freeze_stages(features: nn.Module, k: int, indices: list[int]) -> list[nn.Module]:
    """Freeze the stem and stages 0..k−1 of a timm feature extractor (mmdet's ``frozen_stages``; ``indices``: the
    timm feature index of stages 0–3); returns the frozen modules (to keep in eval mode)."""
    if k < 0:
        return []
    dat = dat_of(features)
    if dat is not None:
        modules = [dat.patch_proj] + [dat.stages[i] for i in range(min(k, len(dat.stages)))]
        modules += [dat.down_projs[i] for i in range(min(k, len(dat.down_projs)))]
        modules += [dat.norms[i] for i in range(min(k, len(dat.norms)))]
    else:
        # FeatureListNet: children in execution order; stage i ends with the module of its feature level.
        names = [n for n, _ in features.named_children()]
        stage_modules = [info["module"].replace(".", "_") for info in features.feature_info.info]
        boundary = stage_modules[indices[k - 1]] if k > 0 else stage_modules[indices[0]]
        if boundary not in names:
            raise ValueError(f"cannot freeze stages: feature module {boundary!r} is not a child of the extractor")
        modules = [getattr(features, n) for n in names[: names.index(boundary) + (1 if k > 0 else 0)]]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
        m.eval()
    return modules


class DenseBackbone(nn.Module):
    """x (B×3×H×W, normalised) → OrderedDict ``{"0": C_a, "1": C_b, …}`` of the stages in ``out_indices``.

    ``.out_channels`` (list, per returned map), ``.strides``; ``.dat`` is the DAT module (None for CNNs), into
    which ``load_backbone_weights`` loads. Frozen stages are excluded from training and kept in eval mode.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        kwargs = dict(cfg.model_kwargs)
        if cfg.drop_path_rate is not None:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        if not timm.models.is_model(cfg.model.split(".")[0]):
            raise ValueError(
                f"unknown backbone model {cfg.model!r} (a DAT variant such as datpp_tiny, or a timm "
                "model such as resnet18)"
            )
        probe_kwargs = {k: v for k, v in kwargs.items() if k != "drop_path_rate"}
        indices = _timm_feature_indices(cfg.model, probe_kwargs)
        timm_indices = tuple(indices[i] for i in cfg.out_indices)
        self.body = timm.create_model(cfg.model, features_only=True, out_indices=timm_indices, **kwargs)
        self.out_indices = cfg.out_indices
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = [STAGE_STRIDES[i] for i in cfg.out_indices]
        self.pretrained_cfg = dict(getattr(self.body, "pretrained_cfg", None) or {})
        dat = self.dat
        if dat is not None:
            # The authors' backbones have no norm (no keys) on stages outside out_indices.
            for i in range(len(dat.norms)):
                if i not in cfg.out_indices:
                    dat.norms[i] = nn.Identity()
            self.min_input_size = dat.min_input_size
        else:
            self.min_input_size = 32
        self._frozen = freeze_stages(self.body, cfg.frozen_stages, indices)
        if cfg.grad_checkpointing:
            self.set_grad_checkpointing(True)
        if cfg.weights:
            load_backbone_weights(self, cfg.weights)

    @property
    def dat(self) -> Optional[DAT]:
        return dat_of(self.body)

    def train(self, mode: bool = True) -> "DenseBackbone":
        super().train(mode)
        for m in self._frozen:
            m.eval()  # frozen stages keep their BatchNorm statistics (mmdet's norm_eval for frozen stages)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.body, enable)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of this module (``ScriptableDenseBackbone``)."""
        return ScriptableDenseBackbone(self)


class _ScriptableFeatureStage(nn.Module):
    """One stage of a scripted DAT feature extractor: the stage (``models/scripting.py``'s ``ScriptableStage``,
    channels-last in and out) and, when its output is returned, its LayerNorm (``norms.<i>``)."""

    def __init__(self, stage: nn.Module, norm: nn.Module, take: bool):
        super().__init__()
        self.stage = stage
        self.norm = norm
        self.take = take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)


class ScriptableDenseBackbone(nn.Module):
    """``DenseBackbone.forward`` in a form TorchScript compiles (``torch.jit.script`` of a whole detector picks it
    through ``DenseBackbone.__prepare_scriptable__``).

    timm's feature wrapper calls ``DAT.forward_intermediates``, which TorchScript cannot compile (the stage
    generator); the scripted DAT (``ScriptableDAT``) has the same stem and stages regrouped per block, so this runs
    them up to the last returned stage and applies each returned stage's norm, as ``forward_intermediates`` with
    ``intermediates_only=True`` does. The modules are shared with the eager backbone, not copied. CNN backbones
    keep timm's feature extractor, which scripts as it is. Output: a dict ``{"0": map, "1": …}`` in stage order
    (TorchScript dicts keep insertion order), B×C×H×W maps."""

    def __init__(self, backbone: DenseBackbone):
        super().__init__()
        dat = backbone.dat
        if dat is not None:
            from ..models.scripting import ScriptableDAT

            scripted = ScriptableDAT(dat)
            self.in_chans: int = scripted.in_chans
            self.min_input_size: int = scripted.min_input_size
            self.patch_proj = scripted.patch_proj
            take = set(backbone.out_indices)
            last = max(take)
            self.stages = nn.ModuleList(
                [
                    _ScriptableFeatureStage(
                        scripted.stages[i], dat.norms[i] if dat.norms is not None else nn.Identity(), i in take
                    )
                    for i in range(last + 1)
                ]
            )
            self._check = scripted
        else:
            self.body = backbone.body

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps: List[torch.Tensor] = []
        if hasattr(self, "body"):  # a static check in TorchScript
            maps = self.body(x)
        else:
            self._check.check_input(x)
            x = self.patch_proj(x)
            for stage in self.stages:
                x = stage(x)
                if stage.take:
                    maps.append(stage.norm(x).permute(0, 3, 1, 2))
        out: Dict[str, torch.Tensor] = {}
        for i, m in enumerate(maps):
            out[str(i)] = m
        return out
