"""Files that survive a crash at any instant: every write goes to a temporary name in the same directory, is
flushed and fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX and Windows), and the
directory is fsync'ed. A reader sees either the old complete file or the new complete file, never half of one.

Used by training (checkpoints, summary.csv, curves), the tools (PNG figures, exports) and the CLI; it imports
nothing of datvit, so every layer may use it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import torch


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
