"""Training and evaluation: ``datvit train`` / ``datvit eval`` on one process or under torchrun.

``Trainer`` (engine) runs the loop with timm's optimizer, scheduler, Mixup, losses and EMA; ``checkpointing``
writes atomic, exactly-resumable checkpoints; ``metrics`` writes summary.csv and the plots.
"""
from ..utils.files import atomic_save
from .checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from .engine import Trainer, TrainingError, evaluate, train
from .modeling import PRESETS, create_model, model_from_arch, resolve_model_kwargs
from .precision import cpu_has_native_bf16, resolve_amp

__all__ = ["CheckpointManager", "PRESETS", "Trainer", "TrainingError", "atomic_save", "capture_rng_state",
           "cpu_has_native_bf16", "create_model", "evaluate", "model_from_arch", "resolve_amp",
           "resolve_model_kwargs", "restore_rng_state", "train"]
