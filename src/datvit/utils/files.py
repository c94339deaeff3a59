"""Files that survive a crash at any instant: every write goes to a temporary name in the same directory, is
flushed and fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX and Windows), and the
directory is fsync'ed. A reader sees either the old complete file or the new complete file, never half of one.

Used by training (checkpoints, summary.csv, curves), the tools (PNG figures, exports) and the CLI; it imports
nothing of datvit, so every layer may use it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from typing import Any, Callable

import torch


class FileWriteError(OSError):
    """A file could not be written (disk full, read-only or missing directory, no permission). The message
    names the path and the reason, and says that the file previously at that path is unchanged."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return self.strerror or super().__str__()


def _write_error(path: str, error: OSError) -> FileWriteError:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif error.errno == errno.EROFS:
        reason = "the file system is read-only"
    elif error.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif error.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    kept = " (the previous file there is unchanged)" if os.path.exists(path) else ""
    return FileWriteError(error.errno, f"cannot write {path}: {reason}{kept}")


# mkstemp's names for the temporary files below: ".<target name>.<8 random characters>.tmp"
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files that writes killed mid-way (kill -9, power loss) left in ``directory``;
    returns their paths. Call it only where no other process is writing (a run directory when the run starts)."""
    directory = os.fspath(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        if _TEMP_RE.match(name) and os.path.isfile(path):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


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
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = _temp_path(directory, os.path.basename(path))
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, FileWriteError):
            raise
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        if isinstance(e, RuntimeError) and _is_disk_full(e):  # torch.save's zip writer wraps the OSError
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from e
        raise
    _fsync_dir(directory)


def _is_disk_full(error: BaseException) -> bool:
    text = str(error).lower()
    return "no space left" in text or "file write failed" in text or "unexpected pos" in text


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
    tmp = None
    try:
        tmp = _temp_path(directory, os.path.basename(target))
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(target, e) from e
    _fsync_dir(directory)
