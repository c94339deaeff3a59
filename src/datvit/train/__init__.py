"""Training and evaluation: ``datvit train`` / ``datvit eval`` on one process or under torchrun.

``Trainer`` (engine) is the one training loop — timm's optimizer, scheduler and EMA, DDP, exact resume — around a
``Task`` (``task``): ``ClassificationTask`` here (timm's transforms, Mixup, losses), detection and segmentation in
``datvit.dense.tasks``. ``checkpointing`` writes atomic, exactly-resumable checkpoints; ``metrics`` writes
summary.csv and the plots.
"""
from ..utils.files import atomic_save
from .checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from .classification import ClassificationTask
from .engine import Trainer, TrainingError, evaluate, train
from .modeling import PRESETS, create_model, model_from_arch, resolve_model_kwargs
from .precision import cpu_has_native_bf16, resolve_amp
from .task import MetricSpec, StepOutput, Task

__all__ = ["CheckpointManager", "ClassificationTask", "MetricSpec", "PRESETS", "StepOutput", "Task", "Trainer",
           "TrainingError", "atomic_save", "capture_rng_state", "cpu_has_native_bf16", "create_model", "evaluate",
           "model_from_arch", "resolve_amp", "resolve_model_kwargs", "restore_rng_state", "train"]
