"""Where a run's curves go besides ``summary.csv`` and the plots: TensorBoard event files in the run directory and,
when asked for, a Weights & Biases run. The engine owns the one :class:`RunLoggers` of a run (rank 0 only) and
feeds it the same points it writes to ``summary.csv`` — classification, detection and segmentation alike.

* TensorBoard (``tensorboard``: None = whenever the ``tensorboard`` package is installed, True = required,
  False = off): ``torch.utils.tensorboard.SummaryWriter`` writing ``events.out.tfevents.*`` beside
  ``summary.csv``; ``tensorboard --logdir output/`` shows every run. A resumed run hides the points after its
  checkpoint that the interrupted process had already written (``purge_step``), so the curves do not double.
* Weights & Biases (``wandb: true``, ``--wandb``): ``wandb.init`` with the run's settings as its config and an id
  kept in the run directory (``wandb_id.txt``), so a resumed run continues the same W&B run. ``WANDB_MODE=offline``
  writes it locally (``wandb sync`` uploads later), ``WANDB_DIR`` says where (default: the run directory).

Scalars are named ``train/<metric>`` for the step curve (loss, the task's step metrics, lr) and ``epoch/<column>``
for the per-epoch row of ``summary.csv``, with the optimizer step as the x axis.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import TrainingError


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _numeric(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


class RunLoggers:
    """The run's TensorBoard writer and W&B run (either may be absent); ``scalars(prefix, values, step)``."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: Optional[bool],
        wandb: bool,
        settings: Mapping[str, Any],
        start_step: int = 0,
        project: Optional[str] = None,
        log: Callable[[str], None] = print,
    ):
        self.run_dir = Path(run_dir)
        self.writer = None
        self.wandb_run = None
        use_tb = tensorboard_available() if tensorboard is None else bool(tensorboard)
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainingError(
                    "--tensorboard needs the tensorboard package: pip install 'datvit[log]' (or --no-tensorboard)"
                ) from e
            self.writer = SummaryWriter(str(self.run_dir), purge_step=start_step or None)
        if wandb:
            self.wandb_run = self._init_wandb(settings, project, start_step, log)

    def _init_wandb(self, settings: Mapping[str, Any], project: Optional[str], start_step: int, log) -> Any:
        try:
            import wandb
        except ImportError as e:
            raise TrainingError("--wandb needs the wandb package: pip install 'datvit[log]'") from e
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        run = wandb.init(
            project=project or "datvit",
            name=self.run_dir.name,
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config=dict(settings),
        )
        log(f"Weights & Biases: run {run_id} ({os.environ.get('WANDB_MODE') or 'online'})")
        return run

    @property
    def active(self) -> bool:
        return self.writer is not None or self.wandb_run is not None

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Every finite number of ``values`` as ``<prefix>/<key>`` at ``step``."""
        numbers = {f"{prefix}/{k.replace('/', '_per_')}": v for k, v in _numeric(values).items()}
        if not numbers:
            return
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
