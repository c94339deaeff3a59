"""The one image decoder of datvit: datasets, ``datvit visualize`` and ``datvit predict`` read files through it."""
from __future__ import annotations

import os

from PIL import Image

# What decoding a corrupt, truncated or hostile image file raises.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike, mode: str) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later in a transform) and convert it to ``mode``."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return img.convert(mode)
