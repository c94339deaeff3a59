"""How a ``datvit`` command ends on a problem: one line ``datvit <command>: error: ...`` and an exit status.

* 2 — a usage error the user fixes in the command line or the files given (missing data, bad configuration,
  a checkpoint that does not fit, an image too small for the model): argparse's status for bad arguments.
* 1 — a runtime failure (disk full, read-only output, a diverged run, out of memory, anything unexpected).
* 128 + N — training stopped on signal N after writing its checkpoint (143 SIGTERM, 130 SIGINT, 138 SIGUSR1),
  the status a shell reports for a process killed by that signal; ``--resume auto`` continues.

A missing optional dependency is a usage error (2) whose line names the extra that installs it, e.g.
``datvit seg train: error: needs segmentation_models_pytorch: pip install 'datvit[dense]'``.

``datvit --debug <command>`` or ``DATVIT_DEBUG=1`` re-raises instead, so the full traceback is printed.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

USAGE_ERROR = 2
RUNTIME_FAILURE = 1

# the extra (pyproject.toml's optional-dependencies) that installs each optional top-level module
OPTIONAL_MODULES: dict[str, str] = {
    "segmentation_models_pytorch": "dense",
    "pycocotools": "dense",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "torchao": "int8",
    "transformers": "hf",
    "huggingface_hub": "hf",
    "scipy": "hf",  # transformers' Mask2Former matching, with DAT as a transformers backbone
    "tensorboard": "log",
    "wandb": "log",
    "mkdocs": "docs",
    "mkdocstrings": "docs",
    "material": "docs",
}


def missing_optional_module(error: BaseException) -> str | None:
    """The optional module (a key of ``OPTIONAL_MODULES``) whose absence caused ``error``, or None. The chain of
    causes and contexts is searched, so an error that wraps the ModuleNotFoundError (``raise ... from e``, and
    ``from None``, which keeps the context) counts too."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name:
            root = current.name.split(".")[0]
            if root in OPTIONAL_MODULES:
                return root
        current = current.__cause__ or current.__context__
    return None


def missing_extra_line(command: str, module: str) -> str:
    """The one line for a missing optional module: what the command needs and the extra that installs it."""
    return f"datvit {command}: error: needs {module}: pip install 'datvit[{OPTIONAL_MODULES[module]}]'"


def debug_enabled() -> bool:
    """``datvit --debug`` (which sets DATVIT_DEBUG) or DATVIT_DEBUG set to anything but '' / '0'."""
    return os.environ.get("DATVIT_DEBUG", "") not in ("", "0")


def _usage_errors() -> tuple[type, ...]:
    from ..data.fashion_mnist import DatasetCorruptError, DatasetNotFoundError
    from ..models import CheckpointError
    from ..train.engine import TrainingError

    return (
        DatasetNotFoundError,
        DatasetCorruptError,
        TrainingError,
        CheckpointError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        ValueError,
    )


def error_line(command: str, error: BaseException) -> str:
    """The one line printed for ``error``."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror and not isinstance(error, FileNotFoundError):
        text = f"{error.filename}: {error.strerror}"  # not "[Errno 13] Permission denied: '...'"
    elif isinstance(error, FileNotFoundError) and error.filename and error.strerror:
        text = f"{error.filename}: no such file or directory"
    return f"datvit {command}: error: {text.splitlines()[0] if len(text.splitlines()) > 3 else ' '.join(text.split())}"


def run_with_user_errors(command: str, func: Callable[[], Any]) -> int:
    """Run ``func`` and turn what it raises into one line on stderr and an exit status (see the module doc);
    without a problem, 0 (or ``func``'s own integer status)."""
    from ..train.engine import TrainingDiverged
    from ..train.preemption import RunInterrupted

    try:
        result = func()
    except RunInterrupted as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 says so
            print(f"datvit {command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        hint = (
            "; the current step was not saved: --resume auto continues from the last checkpoint written"
            if command == "train"
            else ""
        )
        print(f"\ndatvit {command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug_enabled():
            raise
        missing = missing_optional_module(e)
        if missing is not None:  # checked first: the wrapping error may be of any class below
            print(missing_extra_line(command, missing), file=sys.stderr)
            return USAGE_ERROR
        if isinstance(e, _usage_errors()):
            print(error_line(command, e), file=sys.stderr)
            return USAGE_ERROR
        if isinstance(e, (OSError, MemoryError, TrainingDiverged)):
            print(error_line(command, e), file=sys.stderr)
            return RUNTIME_FAILURE
        # a bug or an unforeseen failure: one line, the traceback with --debug
        print(
            error_line(command, f"{type(e).__name__}: {e} (run `datvit --debug {command} ...` for the traceback)"),
            file=sys.stderr,
        )
        return RUNTIME_FAILURE
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
