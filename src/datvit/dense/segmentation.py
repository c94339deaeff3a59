"""UperNet and Semantic FPN from segmentation_models_pytorch over a ``tu-<model>`` encoder, with the authors'
auxiliary FCN head.

smp builds the encoder with ``timm.create_model(..., features_only=True)``, so a DAT encoder carries its per-stage
output LayerNorms (``norms.<i>``, which the authors' segmentation checkpoints hold). smp 0.6's UPerNet decoder adds
its own LayerNorm2d on every encoder feature; with a DAT encoder that would normalise every map twice in a row, so
**smp's ``feature_norms`` are replaced by Identity** and datvit's ``norms`` stay: they are the ones the authors'
UPerHead sees (mmseg's UPerHead has no input norm) and the ones their checkpoints fill. CNN encoders (ResNet,
ConvNeXt) have no output norms, so smp's stay for them.

Other choices, after LeapLabTHU/DAT-Segmentation ``configs/_base_/models/``: UPerHead channels 512 (smp's default
is 256), dropout 0.1 before the classifier; the auxiliary FCNHead on stage 3 (stride 16): one 3×3 conv of 256 +
BN + ReLU, dropout 0.1, 1×1 classifier, loss weight 0.4; Semantic FPN: pyramid 256, head 128, dropout 0.1 (smp's
default 0.2), no auxiliary head. smp asks for H and W divisible by 32; ``segment()`` pads and crops back.
"""

from __future__ import annotations

from typing import Optional

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .backbone import _timm_feature_indices, dat_of, freeze_stages, set_grad_checkpointing
from .config import SegmenterConfig
from .weights import load_backbone_weights


class FCNHead(nn.Module):
    """mmseg's FCNHead with ``num_convs=1``, ``concat_input=False``: conv3×3 → BN → ReLU → dropout → conv1×1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class Segmenter(nn.Module):
    """x: B×3×H×W (normalised, H and W multiples of 32) → logits B×K×H×W; in training mode with an auxiliary head
    → ``(logits, aux_logits)``, both at the input size.

    ``.net`` is the smp model (``.net.encoder.model`` the timm feature extractor), ``.aux_head`` the FCN head or
    None; ``.dat`` the DAT backbone (None for CNN encoders), into which ``load_backbone_weights`` loads.
    """

    output_stride = 32

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        bb = cfg.backbone
        kwargs = dict(bb.model_kwargs)
        if bb.drop_path_rate is not None:
            kwargs["drop_path_rate"] = bb.drop_path_rate
        if cfg.kind == "upernet":
            self.net = smp.UPerNet(
                encoder_name=f"tu-{bb.model}",
                encoder_weights=None,
                decoder_channels=cfg.decoder_channels,
                classes=cfg.num_classes,
                **kwargs,
            )
            # Dropout before the classifier, as mmseg's decode heads (dropout_ratio 0.1).
            self.net.segmentation_head = nn.Sequential(nn.Dropout2d(cfg.dropout), *self.net.segmentation_head)
        else:
            self.net = smp.FPN(
                encoder_name=f"tu-{bb.model}",
                encoder_weights=None,
                decoder_pyramid_channels=cfg.fpn_channels,
                decoder_segmentation_channels=cfg.decoder_channels,
                decoder_dropout=cfg.dropout,
                classes=cfg.num_classes,
                **kwargs,
            )
        features = self.net.encoder.model
        self.pretrained_cfg = dict(getattr(features, "pretrained_cfg", None) or {})
        self.pretrained_cfg.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        self.pretrained_cfg.setdefault("std", IMAGENET_DEFAULT_STD)
        dat = self.dat
        if dat is not None and cfg.kind == "upernet":
            # datvit's per-stage norms already normalise every map smp's decoder sees (module docstring).
            self.net.decoder.feature_norms = nn.ModuleList([nn.Identity() for _ in self.net.decoder.feature_norms])
        self.min_input_size = dat.min_input_size if dat is not None else 32
        # smp's feature list: [input, stride 2 (an empty dummy for transformers), stride 4, 8, 16, 32]
        self._feature_offset = 2
        self.aux_head: Optional[nn.Module] = None
        if cfg.aux_head:
            in_ch = self.net.encoder.out_channels[self._feature_offset + cfg.aux_stage]
            self.aux_head = FCNHead(in_ch, cfg.aux_channels, cfg.num_classes, cfg.dropout)
        self._frozen: list[nn.Module] = []
        if bb.frozen_stages >= 0:
            indices = _timm_feature_indices(bb.model, bb.model_kwargs)
            self._frozen = freeze_stages(features, bb.frozen_stages, indices)
        if bb.grad_checkpointing:
            set_grad_checkpointing(features, True)
        if bb.weights:
            load_backbone_weights(self, bb.weights)

    @property
    def dat(self):
        return dat_of(self.net.encoder.model)

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.net.encoder.model, enable)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"expected a float B×C×H×W batch, got {getattr(x, 'dtype', type(x).__name__)} of "
                f"shape {tuple(getattr(x, 'shape', ()))}"
            )
        h, w = x.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise ValueError(
                f"input {h}×{w}: height and width must be multiples of {self.output_stride}; "
                "datvit.dense.segment() pads any size and crops the logits back"
            )

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        features = self.net.encoder(x)
        logits = self.net.segmentation_head(self.net.decoder(features))
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features[self._feature_offset + self.cfg.aux_stage])
            aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return logits, aux
        return logits


def build_segmenter(cfg: SegmenterConfig) -> Segmenter:
    """An smp UperNet / Semantic FPN with a DAT (or timm CNN) encoder; see ``Segmenter``."""
    return Segmenter(cfg)


def segmentation_loss(output, target: torch.Tensor, aux_weight: float = 0.4, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy of the logits (plus ``aux_weight`` × that of the auxiliary logits when ``output`` is a pair),
    ignoring ``ignore_index`` pixels — mmseg's ``loss_decode`` + ``loss_aux``."""
    if isinstance(output, (tuple, list)):
        logits, aux = output
        return F.cross_entropy(logits, target, ignore_index=ignore_index) + aux_weight * F.cross_entropy(
            aux, target, ignore_index=ignore_index
        )
    return F.cross_entropy(output, target, ignore_index=ignore_index)
