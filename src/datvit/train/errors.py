"""The error a training run stops with when the user can fix the cause (the CLI prints it as one line)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A problem with the configuration or the data that the user can fix; the message says how."""
