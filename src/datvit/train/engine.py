"""The one training loop of datvit: timm's optimizer, scheduler and EMA around a task's model, on one process or
under torchrun, with checkpoints that let an interrupted run continue exactly where it stopped.

The task (``datvit.train.task.Task``: classification here, detection and segmentation in ``datvit.dense.tasks``)
brings the data, the model, the loss of a batch and the evaluation; this module owns everything else, once.

A run's position is (``epoch``: epochs completed, ``batch_in_epoch``: batches done in the next one, ``step``:
optimizer updates). Resuming restores weights, EMA, optimizer, scheduler, scaler, running averages, history and
every RNG, and starts the data sampler at the same batch — data order and augmentation depend only on
(seed, epoch, sample), see ``datvit.data.loader`` — so the resumed run computes what the uninterrupted one would.
"""

from __future__ import annotations

import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datvit.inference.checkpoint_format import MODEL_KEYS, build_checkpoint, read_datvit_checkpoint
from datvit.models import load_state_dict_checked
from datvit.models.factory import count_parameters

from ..utils.files import atomic_write_text, remove_stale_temp_files
from . import distributed as dist_utils
from .checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from .classification import ClassificationTask, channels_for_mean, evaluate  # noqa: F401  (datvit.train's API)
from .config import EngineConfig, config_differences, config_to_dict, settings_device
from .errors import TrainingError
from .metrics import PLOTS, RunningSum, format_summary_line, plot_curves, summary_columns, task_plots, write_summary
from .precision import autocast, resolve_amp
from .preemption import RunInterrupted, StopSignals
from .resolve import as_layers, resolve_run_config
from .run_logging import RunLoggers
from .task import Task


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite; the message names the step and the last good checkpoint."""


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _log(message: str, is_main: bool) -> None:
    if is_main:
        tqdm.write(message, file=sys.stdout)


def _warn(message: str, is_main: bool) -> None:
    if is_main:
        tqdm.write(f"warning: {message}", file=sys.stderr)


# torch optimizers with a fused (single-kernel) step; timm maps adamw/adam/sgd/momentum/nesterov/adagrad to them
_FUSED_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD, torch.optim.Adagrad)


def use_fused_optimizer(opt: Optional[str], device: torch.device, requested: Optional[bool]) -> bool:
    """Whether to build the optimizer with ``fused=True``: ``requested`` (``--opt-fused`` / ``--no-opt-fused``)
    when given, else wherever torch has a fused step for the optimizer on ``device``. The fused step computes the
    same update in one pass per tensor (float rounding aside); on CPU AdamW's step is 4.6x faster
    (`datvit bench levers adamw`)."""
    from timm.optim import get_optimizer_class
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    try:
        cls = get_optimizer_class((opt or "adamw").lower(), bind_defaults=False)
    except (ValueError, KeyError):
        return False
    available = (
        isinstance(cls, type)
        and issubclass(cls, _FUSED_OPTIMIZERS)
        and device.type in _get_fused_kernels_supported_devices()
    )
    if requested and not available:
        raise TrainingError(f"--opt-fused: torch has no fused step for optimizer {opt!r} on {device.type}")
    return available if requested is None else bool(requested)


class Trainer:
    """Builds the task's model, loaders, optimizer, schedule, EMA and checkpoints from one frozen, resolved config
    (:func:`resolve_run_config`); ``fit()`` trains. ``config`` may also be a mapping of settings (a YAML file's,
    say), resolved here; ``task`` defaults to classification (``datvit train``)."""

    def __init__(
        self,
        config: EngineConfig | Mapping[str, Any],
        info: Optional[dist_utils.DistInfo] = None,
        task: Optional[Task] = None,
    ):
        self.task = task or ClassificationTask()
        if not isinstance(config, EngineConfig):
            layers = as_layers(config)
            info = info or dist_utils.init_distributed(settings_device(layers))
        self.info = info or dist_utils.init_distributed(config.device)
        self.device = self.info.device
        self.is_main = self.info.is_main
        if not self.is_main:
            warnings.simplefilter("ignore")  # only rank 0 speaks
        is_main = self.is_main
        # plain functions, not bound methods: a task holding the Trainer would make a reference cycle that keeps
        # the DataLoaders' persistent workers alive at exit (the process then hangs after its last line)
        self.task.bind(self.info, lambda m: _log(m, is_main), lambda m: _warn(m, is_main))
        if not isinstance(config, EngineConfig):
            config = resolve_run_config(self.task, layers, self.info)
        elif self.task.config is not config:
            raise TrainingError(
                "a resolved config belongs to the task that resolved it: pass the settings "
                "to Trainer, or resolve_run_config(task, ...) with the same task"
            )
        self.config = config
        self.run_dir = Path(config.output) / config.experiment
        self.resume_path = config.resume
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.train_set, self.eval_set = self.task.train_set, self.task.eval_set
        self.class_names = self.task.class_names
        self._setup_model()
        self._setup_optimization()
        self.checkpoints = CheckpointManager(self.run_dir, config.checkpoint_hist)
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches done in epoch `self.epoch`
        self.step = 0  # optimizer updates
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self.best = {"metric": None, "epoch": None}
        self.meters = self._fresh_meters()
        self.corrupt: dict[str, str] = {}
        self._rng_to_restore: Optional[dict] = None
        self.signals = StopSignals()  # installed by fit(); a flag the loop reads after every step
        self._stop_signal = 0  # the signal every rank agreed to stop on (0: none)
        self._bad_run: list[int] = []  # steps of the current run of consecutive non-finite losses
        self._last_saved: Optional[tuple[str, int]] = None  # (path, step) of the newest checkpoint written
        self.run_log: Optional[RunLoggers] = None  # TensorBoard / W&B, opened by fit() on rank 0
        if self.resume_path:
            self._resume(self.resume_path)
            self._last_saved = (str(self.resume_path), self.step)
        seed_everything(config.seed + self.info.rank)  # training randomness (drop path, Mixup) differs per rank
        if self.is_main:
            for path in remove_stale_temp_files(self.run_dir):
                self.warn(f"removed {path}, a temporary file left by a write that was killed mid-way")
            atomic_write_text(yaml.safe_dump(config_to_dict(config), sort_keys=True), self.run_dir / "args.yaml")

    # -- setup ------------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        _log(message, self.is_main)

    def warn(self, message: str) -> None:
        _warn(message, self.is_main)

    @property
    def model_kwargs(self) -> Optional[dict[str, Any]]:
        """The model's constructor arguments where the task has them (classification)."""
        return getattr(self.task, "model_kwargs", None)

    def _setup_model(self) -> None:
        config, task = self.config, self.task
        torch.manual_seed(config.seed)  # the same initial weights on every rank (and for EMA)
        model = task.build_model()
        self.n_params = count_parameters(model)
        if config.sync_bn and self.info.distributed:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.warn(
                    "--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel): BatchNorm statistics stay per process"
                )
        model.to(self.device)
        self.model = model
        task.attach_transforms(model)
        self.data_config = getattr(task, "data_config", None)
        self.train_loader = task.create_loader(self.train_set, config.batch_size, training=True)
        self.updates_per_epoch = self.train_loader.sampler.epoch_length // config.batch_size
        self.eval_loader = None
        if self.eval_set is not None:
            self.eval_loader = task.create_loader(
                self.eval_set, config.validation_batch_size or config.batch_size, training=False
            )

    def _setup_optimization(self) -> None:
        config = self.config
        opt_kwargs = {}
        if config.opt_eps is not None:
            opt_kwargs["eps"] = config.opt_eps
        if config.opt_betas is not None:
            opt_kwargs["betas"] = tuple(config.opt_betas)
        # classification: timm puts norms, biases and model.no_weight_decay() (DAT's position tables) in a
        # no-decay group; a task may give its own groups (the dense tasks: the authors' name rules)
        if use_fused_optimizer(config.opt, self.device, config.opt_fused):
            opt_kwargs["fused"] = True
        self.optimizer = create_optimizer_v2(
            self.task.optimizer_params(self.model),
            opt=config.opt,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            **opt_kwargs,
        )
        self.amp = resolve_amp(self.device, config.amp, config.amp_dtype)
        if self.amp.message:
            self.warn(self.amp.message)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp.use_scaler else None
        self.ema = None
        if config.model_ema:
            self.ema = ModelEmaV3(self.model, decay=config.model_ema_decay, use_warmup=config.model_ema_warmup)
        self.scheduler = None
        if config.sched and config.sched != "none":
            self.scheduler, self.total_epochs = create_scheduler_v2(
                self.optimizer,
                sched=config.sched,
                num_epochs=config.epochs,
                decay_epochs=config.decay_epochs,
                decay_milestones=config.decay_milestones,
                cooldown_epochs=config.cooldown_epochs,
                decay_rate=config.decay_rate,
                min_lr=config.min_lr,
                warmup_lr=config.warmup_lr,
                warmup_epochs=config.warmup_epochs,
                warmup_prefix=config.warmup_prefix,
                step_on_epochs=not config.sched_on_updates,
                updates_per_epoch=self.updates_per_epoch,
            )
        else:
            self.total_epochs = config.epochs
        self.train_model = self.model
        if self.info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=self.task.find_unused_parameters
            )

    # -- checkpoints ------------------------------------------------------------------------------------------

    def _fresh_meters(self) -> dict[str, Any]:
        meters: dict[str, Any] = {"loss": RunningSum()}
        meters.update({name: RunningSum() for name in self.task.metrics.step_metrics})
        return {**meters, "seconds": 0.0, "samples": 0}

    def _meter_names(self) -> tuple[str, ...]:
        return ("loss", *self.task.metrics.step_metrics)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (call on every rank: the RNG states of all ranks are gathered)."""
        rng_all = dist_utils.gather_objects(capture_rng_state(), self.info)
        meters = {name: self.meters[name].state_dict() for name in self._meter_names()}
        meters.update(seconds=self.meters["seconds"], samples=self.meters["samples"])
        meters_all = dist_utils.gather_objects(meters, self.info)
        corrupt = self._all_corrupt()
        config = self.config
        training = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "rng": rng_all[0],
            "rng_per_rank": rng_all,
            "data_state": {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "seed": config.seed,
                "batch_size": config.batch_size,
                "world_size": self.info.world_size,
            },
            "meters": meters_all[0],
            "meters_per_rank": meters_all,
            "history": self.history,
            "best": dict(self.best),
            "corrupt_files": corrupt,
            "args": config_to_dict(config),
            "task": self.task.name,
        }
        record = self.task.checkpoint_record()  # arch, data_config, class_names (+ a dense task's model config)
        training.update({k: v for k, v in record.items() if k not in MODEL_KEYS})
        return build_checkpoint(
            self.model.state_dict(),
            arch=record.get("arch"),
            data_config=record.get("data_config"),
            class_names=record.get("class_names"),
            model_ema=self.ema.module.state_dict() if self.ema is not None else None,
            training=training,
        )

    def save(self, epoch_end: Optional[int] = None, is_best: bool = False) -> None:
        """Write last.pth (+ checkpoint-<epoch>.pth, best.pth) — never over a good one with non-finite weights."""
        bad = self._first_nonfinite_tensor()
        if bad is not None:
            raise TrainingDiverged(
                f"{bad} is not finite at step {self.step} (epoch {self.epoch + 1}); nothing was "
                f"saved. {self._last_good_hint()}"
            )
        state = self.state_dict()
        if self.is_main:
            self.checkpoints.save(state, epoch_end=epoch_end, is_best=is_best)
        self._last_saved = (str(self.checkpoints.last), self.step)

    def _first_nonfinite_tensor(self) -> Optional[str]:
        """The name of the first weight, EMA weight or optimizer state tensor holding a NaN or inf (None: all finite).
        Identical on every rank (DDP keeps the replicas equal), so every rank takes the same decision."""
        named = [(f"weight {k}", v) for k, v in self.model.state_dict().items()]
        if self.ema is not None:
            named += [(f"EMA weight {k}", v) for k, v in self.ema.module.state_dict().items()]
        for i, state in enumerate(self.optimizer.state.values()):
            named += [
                (f"optimizer state {k} of parameter {i}", v) for k, v in state.items() if isinstance(v, torch.Tensor)
            ]
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return name
        return None

    def _last_good_hint(self) -> str:
        if self._last_saved is None:
            return "No checkpoint was written before it."
        path, step = self._last_saved
        return f"The last good checkpoint is {path} (step {step}); lower --lr or set --clip-grad and --resume it."

    def _skipped(self) -> dict[str, int]:
        """Run totals of skipped optimizer steps: non-finite losses, and fp16 GradScaler overflows."""
        return self.history.setdefault("skipped", {"nonfinite_loss": 0, "amp_overflow": 0})

    def _resume(self, path: str) -> None:
        loaded = read_datvit_checkpoint(path, trust_checkpoint=getattr(self.config, "trust_checkpoint", False))
        ckpt = loaded.training
        if not loaded.is_datvit or "step" not in ckpt:
            raise TrainingError(
                f"{path} is not a datvit training checkpoint; to start from its weights use --initial-checkpoint"
            )
        if ckpt.get("task", "classification") != self.task.name:
            raise TrainingError(
                f"--resume {path}: the checkpoint is a {ckpt.get('task', 'classification')} run, "
                f"this is {self.task.name}"
            )
        self.task.check_resume(loaded, path)
        differs = config_differences(ckpt.get("args") or {}, config_to_dict(self.config))
        if differs:
            self.warn(
                f"resuming {path} with settings that differ from the checkpoint's (checkpoint → this run): "
                + "; ".join(differs)
            )
        load_state_dict_checked(self.model, loaded.model, path, reset_head_on_mismatch=False)
        if self.config.no_resume_opt:
            self.log(f"resumed the weights of {path} (optimizer, schedule and position not restored)")
            return
        if self.ema is not None and loaded.model_ema is not None:
            load_state_dict_checked(self.ema.module, loaded.model_ema, f"{path} (EMA)", reset_head_on_mismatch=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.batch_in_epoch, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        if isinstance(self.scheduler, PlateauLRScheduler) and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        elif self.scheduler is not None:
            # timm's other schedules are functions of (epoch, step): re-deriving the lr from the arguments gives
            # the same value as the checkpoint's and lets a resumed run extend --epochs.
            self.scheduler.step(self.epoch)
            self.scheduler.step_update(self.step)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        data_state = ckpt.get("data_state", {})
        same_layout = (
            data_state.get("world_size") == self.info.world_size
            and data_state.get("batch_size") == self.config.batch_size
        )
        if self.batch_in_epoch and not same_layout:
            done = self.batch_in_epoch * data_state["batch_size"] * data_state["world_size"]
            self.batch_in_epoch = done // (self.config.batch_size * self.info.world_size)
            self.warn(
                "batch size or number of processes changed since the checkpoint: the epoch continues near, "
                "not exactly at, where it stopped"
            )
        per_rank_meters = ckpt.get("meters_per_rank") or [ckpt.get("meters") or {}]
        meters = per_rank_meters[self.info.rank] if same_layout else {}
        self.meters = {name: RunningSum.from_state(meters.get(name)) for name in self._meter_names()}
        self.meters.update(seconds=meters.get("seconds", 0.0), samples=meters.get("samples", 0))
        self.history = ckpt.get("history") or {"epochs": [], "steps": []}
        self.best = ckpt.get("best") or self.best
        self.corrupt = {p: e for p, e in (ckpt.get("corrupt_files") or [])}
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if same_layout:
            self._rng_to_restore = per_rank[self.info.rank % len(per_rank)]
        self.log(f"resumed {path}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")

    def _all_corrupt(self) -> list[list[str]]:
        merged: dict[str, str] = {}
        for part in dist_utils.gather_objects(self.corrupt, self.info):
            merged.update(part)
        return [[p, merged[p]] for p in sorted(merged)]

    def _record_corrupt(self, problems: list[tuple[str, str]]) -> None:
        for path, error in problems:
            if path not in self.corrupt:
                self.corrupt[path] = error
                self.warn(f"skipped unreadable image {path} ({error})")

    # -- training ---------------------------------------------------------------------------------------------

    def _train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any], int]:
        """One optimizer update; returns (summed loss, sums of the task's step metrics, samples)."""
        config = self.config
        with autocast(self.device, self.amp):
            out = self.task.training_loss(self.train_model, batch, self.epoch)
        loss = out.loss
        self.optimizer.zero_grad(set_to_none=True)
        params = self.model.parameters()
        # backward on every rank even for a non-finite loss: DDP's gradient all-reduce needs all of them
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        # one all-reduce of two integers per step: every rank skips the same steps and stops after the same one
        nonfinite, self._stop_signal = dist_utils.max_over_ranks(
            [not bool(torch.isfinite(loss.detach()).all()), self.signals.requested or 0], self.info
        )
        self.step += 1
        if nonfinite:  # the update is skipped (as GradScaler skips an overflowing fp16 step): weights stay good
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_run.append(self.step)
            self._skipped()["nonfinite_loss"] += 1
        else:
            self._bad_run.clear()
            if self.scaler is not None:
                scale = self.scaler.get_scale()
                if config.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    dispatch_clip_grad(params, config.clip_grad, mode=config.clip_mode)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scaler.get_scale() < scale:  # the scale only drops when inf/NaN gradients skipped the step
                    self._skipped()["amp_overflow"] += 1
            else:
                if config.clip_grad:
                    dispatch_clip_grad(params, config.clip_grad, mode=config.clip_mode)
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
        if self.scheduler is not None:  # the schedule follows the data position, skipped steps included
            self.scheduler.step_update(num_updates=self.step)
        if nonfinite:
            return torch.zeros((), device=self.device), {k: 0.0 for k in out.sums}, 0
        return loss.detach().float() * out.samples, out.sums, out.samples

    def _current_lr(self) -> float:
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def train_epoch(self) -> dict[str, Any]:
        """Train from the current position to the end of epoch ``self.epoch``."""
        config, epoch = self.config, self.epoch
        sampler = self.train_loader.sampler
        sampler.set_epoch(epoch, start=self.batch_in_epoch * config.batch_size)
        self.train_model.train()
        pbar = tqdm(
            total=self.updates_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            dynamic_ncols=True,
            leave=False,
            disable=not self.is_main or config.no_progress,
            file=sys.stderr,
        )
        if self._rng_to_restore is not None:  # exactly where the checkpoint left every generator
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        t_start = time.perf_counter()
        session_samples = 0
        window = self._fresh_window()  # sums since the last curve point
        for batch in self.train_loader:
            self._record_corrupt(self.task.batch_problems(batch))
            loss_sum, sums, n = self._train_step(batch)
            self.batch_in_epoch += 1
            session_samples += n
            window["loss"] += loss_sum
            for name, value in sums.items():
                window[name] += value
            window["samples"] += n
            last_batch = self.batch_in_epoch >= self.updates_per_epoch
            if self.step % config.log_interval == 0 or last_batch:
                self._flush_window(window, pbar, session_samples * self.info.world_size, time.perf_counter() - t_start)
            pbar.update(1)
            if (
                config.checkpoint_interval
                and self.step % config.checkpoint_interval == 0
                and not last_batch
                and not self._bad_run
            ):  # no step checkpoint inside a run of non-finite losses
                self._flush_window(window, pbar, session_samples * self.info.world_size, time.perf_counter() - t_start)
                self.meters["seconds"] += time.perf_counter() - t_start
                self.save()
                t_start = time.perf_counter()
                session_samples = 0
            if self.config.max_bad_steps and len(self._bad_run) >= self.config.max_bad_steps:
                pbar.close()
                raise TrainingDiverged(self._diverged_message())
            if not self.info.distributed:  # one process: also a signal that came after the step's flag read
                self._stop_signal = self.signals.requested or 0
            if self._stop_signal:
                pbar.close()
                self._flush_window(window, None, 0, 0.0)
                self.meters["seconds"] += time.perf_counter() - t_start
                self._stop_on_signal()
            if last_batch:
                break
        pbar.close()
        self._flush_window(window, None, 0, 0.0)
        self.meters["seconds"] += time.perf_counter() - t_start
        seconds = self.meters["seconds"]
        names = self._meter_names()
        *totals, count = dist_utils.all_reduce_sum(
            [self.meters[n].total for n in names] + [self.meters["loss"].count], self.info
        )
        result = {name: total / count if count else float("nan") for name, total in zip(names, totals)}
        return {**result, "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else 0.0}

    def _fresh_window(self) -> dict[str, Any]:
        return {name: 0.0 for name in self._meter_names()} | {"samples": 0}

    def _diverged_message(self) -> str:
        first, last = self._bad_run[0], self._bad_run[-1]
        return (
            f"the loss was not finite for {len(self._bad_run)} consecutive steps (steps {first}–{last}, epoch "
            f"{self.epoch + 1}; --max-bad-steps {self.config.max_bad_steps}); their updates were skipped and "
            f"nothing was saved after them. {self._last_good_hint()}"
        )

    def _stop_on_signal(self) -> None:
        """Write the checkpoint of the position reached (unless the step's checkpoint was just written) and raise
        ``RunInterrupted``. At an epoch's last batch the checkpoint holds the whole epoch as done
        (``batch_in_epoch == updates_per_epoch``): the resumed run goes straight to the epoch's evaluation."""
        if (
            self._last_saved is None
            or self._last_saved[1] != self.step
            or self._last_saved[0] != str(self.checkpoints.last)
        ):
            self.save()
        name = signal.Signals(self._stop_signal).name
        raise RunInterrupted(
            f"stopped on {name} after step {self.step} (epoch {self.epoch + 1}, batch "
            f"{self.batch_in_epoch}/{self.updates_per_epoch}); checkpoint: {self.checkpoints.last}. "
            "Continue with the same command plus --resume auto",
            self._stop_signal,
        )

    def _flush_window(self, window: dict[str, Any], pbar: Optional[tqdm], session_images: int, elapsed: float) -> None:
        """Move the step accumulators into the epoch's averages, add a curve point, refresh the progress bar."""
        n = window["samples"]
        if n:
            point = {"epoch": self.epoch + self.batch_in_epoch / self.updates_per_epoch, "step": self.step}
            for name in self._meter_names():
                value = float(window[name])
                self.meters[name].add(value, n)
                point[name] = value / n
            self.meters["samples"] += n
            point["lr"] = self._current_lr()
            self.history["steps"].append(point)
            if self.run_log is not None:
                self.run_log.scalars("train", {k: v for k, v in point.items() if k != "step"}, self.step)
            window.update(self._fresh_window())
        if pbar is not None and not pbar.disable:
            shown = {"loss": f"{self.meters['loss'].mean:.4f}"}
            shown.update(
                {
                    ("acc" if name == "top1" else name): f"{self.meters[name].mean:.2f}"
                    for name in self.task.metrics.step_metrics
                }
            )
            pbar.set_postfix(
                **shown,
                lr=f"{self._current_lr():.3g}",
                img_s=f"{session_images / elapsed:.0f}" if elapsed > 0 else "-",
                refresh=False,
            )

    def _evaluate_epoch(self) -> dict[str, Any]:
        row: dict[str, Any] = {key: None for key, _, _ in self.task.metrics.eval_columns}
        if self.eval_loader is None:
            return row
        progress = not self.config.no_progress
        result = self.task.evaluate(self.model, self.eval_loader, self.amp, progress, "eval")
        self._record_corrupt(result.pop("problems", []))
        row.update({f"eval_{k}": v for k, v in result.items()})
        if self.ema is not None:
            ema = self.task.evaluate(self.ema.module, self.eval_loader, self.amp, progress, "eval EMA")
            ema.pop("problems", None)
            row.update({f"ema_eval_{k}": v for k, v in ema.items()})
        return row

    def _summary_columns(self) -> tuple[str, ...]:
        return summary_columns([key for key, _, _ in self.task.metrics.eval_columns])

    def _plots(self) -> dict[str, tuple]:
        spec = self.task.metrics
        if isinstance(self.task, ClassificationTask):
            return PLOTS
        name, title, ylabel, series = spec.plot
        step = (spec.step_metrics[0], f"train {spec.step_metrics[0]} (steps)") if spec.step_metrics else None
        return task_plots(name, title, ylabel, series, step)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the final summary (also printed)."""
        config = self.config
        self.log(
            f"{self.task.describe(self.model)} for {config.epochs} epochs "
            f"({self.updates_per_epoch} steps each) on {self.info.world_size} × {self.device.type}, global batch "
            f"{config.batch_size * self.info.world_size}, lr {config.lr:.3g}; writing to {self.run_dir}"
        )
        if self.is_main:
            self.run_log = RunLoggers(
                self.run_dir,
                config.tensorboard,
                config.wandb,
                config_to_dict(config),
                start_step=self.step,
                project=config.wandb_project,
                log=self.log,
            )
        try:
            with self.signals:
                self._fit_epochs()
        finally:
            if self.run_log is not None:
                self.run_log.close()
                self.run_log = None
        return self.finish()

    def _fit_epochs(self) -> None:
        config = self.config
        while self.epoch < config.epochs:
            train = self.train_epoch()
            row = {
                "epoch": self.epoch + 1,
                "train_loss": train["loss"],
                **self._evaluate_epoch(),
                "lr": self._current_lr(),
                "images/s": train["images_per_s"],
                "seconds": train["seconds"],
            }
            best_key = self.task.metrics.best
            if self.scheduler is not None:
                self.scheduler.step(self.epoch + 1, row.get(best_key))
            metric = row[best_key] if row.get(best_key) is not None else -row["train_loss"]
            is_best = self.best["metric"] is None or metric > self.best["metric"]
            if is_best:
                self.best = {"metric": metric, "epoch": self.epoch + 1}
            self.history["epochs"].append(row)
            if self.run_log is not None:
                self.run_log.scalars("epoch", row, self.step)
                self.run_log.flush()
            self.epoch += 1
            self.batch_in_epoch = 0
            self.meters = self._fresh_meters()
            self.save(epoch_end=self.epoch, is_best=is_best)
            if self.is_main:
                write_summary(self.run_dir, self.history["epochs"], self._summary_columns())
                plot_curves(self.run_dir, self.history["epochs"], self.history["steps"], self._plots())
            self.log(format_summary_line(row, config.epochs, self.task.metrics.eval_columns, self.task.metrics.best))
            skipped = self._skipped()
            if any(skipped.values()):
                self.warn(
                    f"skipped optimizer steps so far: {skipped['nonfinite_loss']} with a non-finite loss, "
                    f"{skipped['amp_overflow']} fp16 overflows (GradScaler)"
                )
            # a signal that came during the evaluation or the epoch's checkpoint: stop with that checkpoint
            self._stop_signal = dist_utils.max_over_ranks([self.signals.requested or 0], self.info)[0]
            if self._stop_signal and self.epoch < config.epochs:
                self._stop_on_signal()

    def close(self) -> None:
        """Stop the loaders' persistent worker processes now. They ignore stop signals (see datvit.data.loader), so
        a loader iterator still alive when the interpreter exits — kept by any reference cycle — would leave
        multiprocessing's exit handler waiting for them forever; a grid of runs in one process would also collect
        them run after run."""
        for loader in (getattr(self, "train_loader", None), getattr(self, "eval_loader", None)):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            if loader is not None:
                loader._iterator = None

    def finish(self) -> dict[str, Any]:
        corrupt = self._all_corrupt()
        if corrupt and self.is_main:
            lines = "".join(f"{p}\t{e}\n" for p, e in corrupt)
            (self.run_dir / "corrupt_files.txt").write_text(lines)
            self.warn(
                f"{len(corrupt)} unreadable image file(s) were skipped; listed in {self.run_dir / 'corrupt_files.txt'}"
            )
        last = self.history["epochs"][-1] if self.history["epochs"] else {}
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "steps": self.step,
            "best_metric": self.best["metric"],
            "best_epoch": self.best["epoch"],
            **self.task.run_summary(last),
            "corrupt_files": len(corrupt),
            "parameters": self.n_params,
            "skipped_nonfinite_steps": self._skipped()["nonfinite_loss"],
            "skipped_amp_overflow_steps": self._skipped()["amp_overflow"],
            "train_seconds": sum(r["seconds"] for r in self.history["epochs"]),
        }
        if self.best["metric"] is not None:
            best_key = self.task.metrics.best
            what = (
                ("top-1" if best_key == "eval_top1" else best_key.removeprefix("eval_"))
                if last.get(best_key) is not None
                else "-train loss"
            )
            self.log(
                f"done: best {what} {self.best['metric']:.2f} at epoch {self.best['epoch']}; checkpoints, "
                f"summary.csv and plots in {self.run_dir}"
            )
        return summary


def train(
    settings: EngineConfig | Mapping[str, Any] | Iterable[tuple[str, Mapping[str, Any]]], task: Optional[Task] = None
) -> dict[str, Any]:
    """Train ``task`` (default: classification, ``datvit train``); joins and leaves the torchrun process group.

    ``settings``: a config, a mapping of settings (the fields of :class:`~datvit.train.config.TrainConfig` or
    of the task's config; unset values come from the task's recipe), or layers ``[(where, mapping), ...]``, later
    ones winning (the command line passes ``[(yaml file, its values), ("command line", the flags given)]``)."""
    layers = as_layers(settings)
    info = dist_utils.init_distributed(settings_device(layers))
    trainer = None
    try:
        trainer = Trainer(layers, info, task)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        dist_utils.cleanup()
