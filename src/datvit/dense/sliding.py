"""``segment()``: a segmenter's logits for an image of any size — whole-image or sliding windows.

smp's networks need H and W divisible by 32 (and DAT at least its minimum size); the authors' ADE20K test runs the
whole image (``mode='whole'``) after rescaling its short side to 512, which gives sides such as 683 that smp
refuses. Here the image is zero-padded at the bottom/right to the next multiple of 32 and the logits are cropped
back, so the padding only adds context. Sliding windows (mmseg's ``slide_inference``: ``crop`` 512, ``stride`` 341)
are for images much larger than the training crop: overlapping windows, each padded the same way, logits averaged
where they overlap.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph = max(-(-h // multiple) * multiple, min_size) - h
    pw = max(-(-w // multiple) * multiple, min_size) - w
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _forward(model: nn.Module, x: torch.Tensor, multiple: int, min_size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = model(_pad_to_multiple(x, multiple, min_size))
    if isinstance(out, (tuple, list)):  # a segmenter left in training mode returns (logits, aux_logits)
        out = out[0]
    return out[..., :h, :w]


@torch.no_grad()
def segment(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: Optional[int] = None,
    mode: str = "whole",
    crop: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    out_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Logits B×K×H×W (or K×H×W for an unbatched image) of ``model`` on a normalised image of any size.

    ``mode="whole"``: one pass over the padded image; ``"slide"``: ``crop``×``crop`` windows every ``stride``
    pixels. ``out_size`` resizes the logits bilinearly (e.g. to the label's size when the image was rescaled).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or not image.is_floating_point():
        raise ValueError(
            f"expected a normalised float image C×H×W or B×C×H×W, got "
            f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}"
        )
    unbatched = image.ndim == 3
    x = image.unsqueeze(0) if unbatched else image
    multiple = int(getattr(model, "output_stride", 32))
    min_size = int(getattr(model, "min_input_size", 0))
    if mode == "whole":
        logits = _forward(model, x, multiple, min_size)
    else:
        ch, cw = (crop, crop) if isinstance(crop, int) else tuple(crop)
        sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
        b, _, h, w = x.shape
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        logits: Optional[torch.Tensor] = None
        count = x.new_zeros(1, 1, h, w)
        for r in range(rows):
            for c in range(cols):
                y1, x1 = r * sh, c * sw
                y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                part = _forward(model, x[..., y1:y2, x1:x2], multiple, min_size)
                if logits is None:
                    logits = x.new_zeros(b, part.shape[1], h, w)
                logits[..., y1:y2, x1:x2] += part
                count[..., y1:y2, x1:x2] += 1
        logits = logits / count
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model predicts {logits.shape[1]} classes, expected {num_classes}")
    if out_size is not None and tuple(out_size) != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits[0] if unbatched else logits
