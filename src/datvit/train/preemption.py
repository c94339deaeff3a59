"""Stopping a training run cleanly on a signal: the pre-emption notice of SLURM and Kubernetes, and Ctrl-C.

SIGTERM (what ``scancel``, SLURM pre-emption, Kubernetes and torchrun's agent send), SIGINT (Ctrl-C) and SIGUSR1
(``sbatch --signal=USR1@90``, SLURM's advance warning; PyTorch Lightning's ``SLURMEnvironment`` listens to it
too) only *request* a stop: the handler sets a flag, the loop finishes the optimizer step it is in, writes
``last.pth`` with the exact data position and raises ``RunInterrupted``, and the command exits with
128 + the signal number (143, 130, 138) — the status a shell reports for a process killed by that signal, so a
job script can tell "stopped, resumable" from "failed" (1) and requeue. A second Ctrl-C exits at once (without
the checkpoint of the current step); further SIGTERM/SIGUSR1 are ignored while the checkpoint is being written:
SLURM follows its SIGTERM with SIGKILL after ``KillWait`` (30 s by default), torchrun's agent after 30 s.

Under torchrun the ranks see the signal at slightly different steps, so the flag is summed over all ranks once
per step (``distributed.max_over_ranks``) and every rank stops after the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


def exit_status(signum: int) -> int:
    """128 + signal number: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1 (Linux)."""
    return 128 + int(signum)


class RunInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = exit_status(signum)


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT/SIGUSR1 into a stop request (``requested``: the first signal
    received, or None) and restores the previous handlers on exit. Signal handlers can only be installed from
    the main thread; elsewhere (a notebook's worker thread) it does nothing and signals keep their default effect.
    """

    def __init__(self, signals: tuple = STOP_SIGNALS):
        self.signals = signals
        self.requested: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested is None:
            self.requested = signum
            return
        if signum == signal.SIGINT:  # the second Ctrl-C: the user does not want to wait for the checkpoint
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
