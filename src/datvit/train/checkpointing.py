"""Training checkpoints that survive a crash at any instant, and the random state needed to continue exactly.

Every file is written atomically (``datvit.utils.files``): a reader — or a resumed run — sees either the old
complete file or the new complete file, never half of one. ``checkpoint-<epoch>.pth``
and ``best.pth`` are hard links to the same bytes as ``last.pth`` where the filesystem allows (a copy otherwise).

Everything stored is tensors or plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import glob
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..utils.files import atomic_link, atomic_save

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)\.pth$")


# -- random state -------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and every CUDA generator, as tensors and plain values."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# -- the run directory ------------------------------------------------------------------------------------------


class CheckpointManager:
    """Writes ``last.pth`` (every save), ``checkpoint-<epoch>.pth`` (epoch ends; the newest ``hist`` kept) and
    ``best.pth`` (when the metric improves) into ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike, hist: int = 10):
        self.run_dir = Path(run_dir)
        self.hist = hist

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pth"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pth"

    def save(self, state: dict[str, Any], epoch_end: Optional[int] = None, is_best: bool = False) -> Path:
        """Write ``state`` as last.pth; at the end of epoch ``epoch_end`` (1-based) also keep it as
        checkpoint-<epoch>.pth; ``is_best`` also makes it best.pth."""
        atomic_save(state, self.last)
        if epoch_end is not None and self.hist > 0:
            atomic_link(self.last, self.run_dir / f"checkpoint-{epoch_end}.pth")
            self.prune()
        if is_best:
            atomic_link(self.last, self.best)
        return self.last

    def epoch_checkpoints(self) -> list[Path]:
        """checkpoint-<epoch>.pth files, oldest first."""
        found = []
        for path in self.run_dir.glob("checkpoint-*.pth"):
            m = CHECKPOINT_RE.search(path.name)
            if m:
                found.append((int(m[1]), path))
        return [p for _, p in sorted(found)]

    def prune(self) -> None:
        for path in self.epoch_checkpoints()[: -self.hist]:
            path.unlink(missing_ok=True)


def find_auto_resume(output: str | os.PathLike, experiment: Optional[str]) -> Optional[Path]:
    """``--resume auto``: last.pth of ``output/experiment``, or of the most recently written run under
    ``output`` when no experiment is named; None when there is nothing to resume."""
    if experiment:
        path = Path(output) / experiment / "last.pth"
        return path if path.is_file() else None
    candidates = [Path(p) for p in glob.glob(os.path.join(os.fspath(output), "*", "last.pth"))]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
