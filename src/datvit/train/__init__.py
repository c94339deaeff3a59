"""Training and evaluation: ``datvit train`` / ``datvit eval`` on one process or under torchrun.

``Trainer`` (engine) is the one training loop — timm's optimizer, scheduler and EMA, DDP, exact resume — around a
``Task`` (``task``): ``ClassificationTask`` here (timm's transforms, Mixup, losses), detection and segmentation in
``datvit.dense.tasks``. A run is described by one frozen config (``config``: ``TrainConfig`` and the dense
tasks' subclasses of ``EngineConfig``), resolved once by ``resolve`` before anything is built. ``checkpointing``
writes atomic, exactly-resumable checkpoints; ``metrics`` writes summary.csv and the plots.
"""

from ..utils.files import atomic_save
from .checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from .classification import ClassificationTask
from .config import EngineConfig, TrainConfig
from .engine import Trainer, TrainingError, evaluate, train
from .evaluation import EvalConfig, run_eval
from .precision import cpu_has_native_bf16, resolve_amp
from .resolve import resolve_run_config
from .task import MetricSpec, StepOutput, Task

__all__ = [
    "CheckpointManager",
    "ClassificationTask",
    "EngineConfig",
    "EvalConfig",
    "MetricSpec",
    "StepOutput",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "atomic_save",
    "capture_rng_state",
    "cpu_has_native_bf16",
    "evaluate",
    "resolve_amp",
    "resolve_run_config",
    "restore_rng_state",
    "run_eval",
    "train",
]
