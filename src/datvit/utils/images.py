"""The one image decoder of datvit: datasets, ``datvit visualize`` and ``datvit predict`` read files through it.

``read_image`` returns what the picture looks like, in ``mode`` ('RGB' or 'L'), for every file PIL opens:

* **16-bit grayscale** (PNG ``I;16``, TIFF ``I``): scaled to 8 bits (value / 257, so 65535 → 255 and 50% grey
  stays 50% grey). ``Image.convert`` clips instead: anything above 255 of 65535 — nearly every pixel — becomes
  white. Float images (``F``) are taken as 0–1 when their maximum is at most 1, otherwise as 0–255.
* **Transparency** (RGBA, LA, PA, and palette or RGB/L images with a transparent colour): composited on a **white**
  background, as an image viewer or browser shows it. ``convert('RGB')`` (what timm's and torchvision's loaders
  do) keeps whatever colour happens to be stored under transparent pixels — often black, sometimes noise.
* **Palette** (P) and **CMYK** (JPEG, including Adobe's inverted CMYK, which PIL's decoder undoes): converted by
  PIL. **EXIF orientation** (phone photos): applied (``ImageOps.exif_transpose``), as viewers do.
* **Very large images**: up to ``MAX_PIXELS`` (268M pixels, 16384²) are read — PIL by default warns above 89M
  and refuses above 179M as a possible decompression bomb; larger files raise ``ImageTooLargeError``, which
  datasets treat like a corrupt file (skipped and listed). A JPEG above ``DRAFT_PIXELS`` (64M pixels, 8192²) is
  decoded at the largest of the JPEG decoder's 1/2, 1/4, 1/8 scales that brings it under that size (``draft``):
  4-64× less memory for an image that will be resized to a few hundred pixels anyway. Smaller images are decoded
  in full, so results match a full decode bit for bit.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 16384 * 16384
DRAFT_PIXELS = 8192 * 8192
BACKGROUND = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageTooLargeError(ValueError):
    """The image has more than ``MAX_PIXELS`` pixels."""


# What decoding a corrupt, truncated, hostile or oversized image file raises.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _open(f, path) -> Image.Image:
    """``Image.open`` with datvit's size limit instead of PIL's decompression-bomb limits."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked below, against MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{path}: {width}×{height} pixels is more than datvit reads ({MAX_PIXELS / 1e6:.0f}M pixels)"
        )
    return img


def _draft_large_jpeg(img: Image.Image) -> None:
    width, height = img.size
    if img.format != "JPEG" or width * height <= DRAFT_PIXELS:
        return
    for scale in (2, 4, 8):
        if (width / scale) * (height / scale) <= DRAFT_PIXELS:
            break
    img.draft(None, (width // scale, height // scale))  # the decoder's largest scale giving at least this size


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale → 8-bit 'L', by scaling rather than clipping."""
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        values = np.asarray(img).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8), "L")
    return img


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "RGB", "L") and "transparency" in img.info
    )


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """A decoded image in ``mode`` ('RGB' or 'L'): 16-bit scaled, transparency composited on white."""
    img = _to_8bit(img)
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert(mode)


def read_image(path: str | os.PathLike, mode: str) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later in a transform), upright as its EXIF
    orientation says, in ``mode`` (see the module doc for 16-bit, transparent, CMYK and very large images)."""
    with open(path, "rb") as f:
        img = _open(f, path)
        _draft_large_jpeg(img)
        img.load()
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return to_mode(img, mode)
