"""What a training task brings to the one training engine (``datvit.train.engine.Trainer``).

The engine owns what every task shares: the loop, the optimizer and schedule, EMA, mixed precision, DDP,
atomic checkpoints and exact resume, progress bars, ``summary.csv`` and the PNG curves. A task owns what differs
between classification, detection and segmentation: its datasets and loaders, its model, the loss of one batch,
its evaluation and which metric picks ``best.pth``.

Exact resume needs nothing from a task beyond two rules: its training loader must be built on
``datvit.data.loader.EpochSampler`` + ``SeededDataset`` (data order and augmentation from (seed, epoch, sample)
only), and its ``training_loss`` may use the global RNGs (the engine checkpoints them).

Tasks: ``datvit.train.classification.ClassificationTask`` here; ``datvit.dense.tasks.DetectionTask`` and
``SegmentationTask`` live with the dense library (the engine never imports ``datvit.dense``, so training a
classifier needs none of its dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.loader import collate_skip_corrupt, create_loader
from . import distributed as dist_utils
from .config import EngineConfig
from .precision import AmpPlan


@dataclass
class StepOutput:
    """What one training batch gave: the loss to back-propagate (mean over the batch), how many samples it
    averaged over (0 for a placeholder batch that must still step under DDP), and per-sample sums of the
    task's step metrics (e.g. ``{"top1": correct × 100}``) for the running averages and the curves."""

    loss: torch.Tensor
    samples: int
    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """How the engine reports a task: ``best`` is the epoch-row key that picks best.pth (higher is better;
    ``None`` rows fall back to −train loss), ``eval_columns`` the evaluation columns of summary.csv and the
    one-line epoch summary (key, label, format), ``step_metrics`` the per-step averages kept besides the loss,
    ``plot`` the evaluation curves drawn in ``<plot>.png`` (title, y label, [(key, label)])."""

    best: str
    eval_columns: tuple[tuple[str, str, str], ...]
    step_metrics: tuple[str, ...] = ()
    plot: tuple[str, str, str, tuple[tuple[str, str], ...]] = ("metrics", "metrics", "value", ())


class Task:
    """Base class of training tasks. Subclasses set ``name`` and ``metrics`` and implement the methods that raise
    NotImplementedError; the others have defaults that fit most tasks."""

    name: str = "task"
    metrics: MetricSpec
    # DDP must be told when a step may leave parameters without gradient (e.g. Mask R-CNN's mask head on a
    # batch without positive proposals); it costs an extra traversal of the graph, so only tasks that need it
    find_unused_parameters: bool = False

    # the task's frozen run configuration (a subclass of EngineConfig with the task's own settings)
    run_config_cls: type[EngineConfig] = EngineConfig
    # how a list of samples becomes a batch (classification: images and targets, unreadable files set aside)
    collate_fn: Callable[[list], Any] = staticmethod(collate_skip_corrupt)

    def __init__(self) -> None:
        self.config: Optional[EngineConfig] = None
        self.info = dist_utils.DistInfo()
        self.device = torch.device("cpu")
        self.train_set: Optional[Dataset] = None
        self.eval_set: Optional[Dataset] = None
        self.class_names: list[str] = []
        self.log: Callable[[str], None] = print
        self.warn: Callable[[str], None] = print

    # -- resolution (once, before anything is built) ------------------------------------------------------------

    def bind(self, info: dist_utils.DistInfo, log: Callable[[str], None], warn: Callable[[str], None]) -> None:
        self.info, self.device, self.log, self.warn = info, info.device, log, warn

    def recipe(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The recipe the user's ``settings`` are laid over (it may depend on them, e.g. on the dataset)."""
        return {}

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """Fill in the values that depend on the task's data and model (class count, input size, ...) and open
        the datasets: ``train_set``, ``eval_set`` (None when the run has no evaluation split) and
        ``class_names``. Returns the completed values; builds no model."""
        raise NotImplementedError

    # -- building (called once, in this order, with ``self.config`` set) ----------------------------------------

    def build_model(self) -> nn.Module:
        """The model to train, on the CPU, initialised the same on every rank (the engine seeds before)."""
        raise NotImplementedError

    def attach_transforms(self, model: nn.Module) -> None:
        """Set the datasets' transforms once the model (and with it the input size) is known."""

    def create_loader(self, dataset: Dataset, batch_size: int, training: bool) -> DataLoader:
        """The one loader factory (``datvit.data.loader.create_loader``) with the task's ``collate_fn``: an
        ``EpochSampler`` (training: per-sample seeds, the last partial batch dropped) and workers that ignore
        stop signals, so every task resumes exactly and stops cleanly."""
        config, info = self.config, self.info
        return create_loader(
            dataset,
            batch_size,
            training=training,
            workers=config.workers,
            seed=config.seed,
            rank=info.rank,
            world_size=info.world_size,
            pin_memory=config.pin_mem,
            collate_fn=self.collate_fn,
        )

    def optimizer_params(self, model: nn.Module) -> Any:
        """What the optimizer gets: the module (timm's default no-decay rule) or a list of parameter groups."""
        return model

    # -- training and evaluation --------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: Any, epoch: int) -> StepOutput:
        """Forward one training batch through ``model`` (DDP-wrapped under torchrun; the engine's autocast is
        active) and return its loss."""
        raise NotImplementedError

    def batch_problems(self, batch: Any) -> list[tuple[str, str]]:
        """(path, reason) of the samples of ``batch`` that were skipped (unreadable files); counted by the engine."""
        return [(s.path, s.error) for s in getattr(batch, "corrupt", ())]

    def evaluate(self, model: nn.Module, loader: DataLoader, amp: AmpPlan, progress: bool, desc: str) -> dict[str, Any]:
        """Metrics of ``model`` over ``loader`` summed over all ranks, keyed as ``metrics.eval_columns`` without
        the ``eval_`` prefix; ``"problems"``: this rank's skipped samples [(path, reason)]."""
        raise NotImplementedError

    # -- what a run records -------------------------------------------------------------------------------------

    def describe(self, model: nn.Module) -> str:
        """The first line a run prints: what is trained on what."""
        return f"training {self.name} model"

    def checkpoint_record(self) -> dict[str, Any]:
        """What the checkpoint stores besides the training state so eval/predict rebuild the model alone:
        ``arch``, ``class_names``, ``data_config`` (``datvit.inference.checkpoint_format``'s model keys) and
        anything task-specific (kept beside the training state)."""
        raise NotImplementedError

    def check_resume(self, loaded: Any, path: str) -> None:
        """Refuse (one line) to resume a checkpoint ``loaded`` (a ``DatvitCheckpoint``) of another model before its
        weights are loaded."""

    def run_summary(self, last_row: dict[str, Any]) -> dict[str, Any]:
        """Task-specific entries of the summary ``fit()`` returns."""
        return {}
