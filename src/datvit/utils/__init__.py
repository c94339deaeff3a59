"""Generic helpers every layer may use: atomic file writes (``files``) and image decoding (``images``).

Nothing here imports the rest of datvit."""
