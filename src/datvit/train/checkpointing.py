"""Training checkpoints that survive a crash at any instant, and the random state needed to continue exactly.

Every file is written to a temporary name in the same directory, flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), and the directory is fsync'ed: a reader — or a resumed
run — sees either the old complete file or the new complete file, never half of one. ``checkpoint-<epoch>.pth``
and ``best.pth`` are hard links to the same bytes as ``last.pth`` where the filesystem allows (a copy otherwise).

Everything stored is tensors or plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)\.pth$")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temp_path(directory: str, name: str) -> str:
    """A new empty file next to the target, with the permissions a plain open() would give (mkstemp's are 0600)."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(path, _FILE_MODE)
    return path


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, flush + fsync it, rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_path(directory, os.path.basename(path))
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temp file in the same directory + fsync + rename)."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a small text file atomically (summary.csv, reports)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_savefig(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically."""
    _atomic_write(path, lambda f: fig.savefig(f, format="png"), "wb")


def atomic_link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``target`` hold the bytes of ``source`` (a hard link, or a copy), replacing it atomically."""
    source, target = os.fspath(source), os.fspath(target)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = _temp_path(directory, os.path.basename(target))
    os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(directory)


# -- random state -------------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and every CUDA generator, as tensors and plain values."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
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
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
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
        for path in self.epoch_checkpoints()[:-self.hist]:
            path.unlink(missing_ok=True)


def find_auto_resume(output: str | os.PathLike, experiment: Optional[str]) -> Optional[Path]:
    """``--resume auto``: last.pth of ``output/experiment``, or of the most recently written run under
    ``output`` when no experiment is named; None when there is nothing to resume."""
    if experiment:
        path = Path(output) / experiment / "last.pth"
        return path if path.is_file() else None
    candidates = [Path(p) for p in glob.glob(os.path.join(os.fspath(output), "*", "last.pth"))]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
