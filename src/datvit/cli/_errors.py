"""How ``datvit train`` / ``datvit eval`` end on a problem the user can fix: one line and exit code 2."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def run_with_user_errors(command: str, func: Callable[[], Any]) -> int:
    """Run ``func``; missing data, bad configurations and checkpoints that do not fit print ``datvit <command>:
    error: ...`` (no traceback unless DATVIT_DEBUG is set) and return 2; Ctrl-C returns 130."""
    from ..data.fashion_mnist import DatasetCorruptError, DatasetNotFoundError
    from ..models import CheckpointError
    from ..train.engine import TrainingError

    try:
        func()
    except (DatasetNotFoundError, DatasetCorruptError, TrainingError, CheckpointError, FileNotFoundError,
            ValueError) as e:
        if os.environ.get("DATVIT_DEBUG"):
            raise
        print(f"datvit {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; continue with the same command plus --resume auto" if command == "train" else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    return 0
