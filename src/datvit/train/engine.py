"""The training loop: timm's optimizer, scheduler, Mixup, losses and EMA around a DAT model, on one process or
under torchrun, with checkpoints that let an interrupted run continue exactly where it stopped.

A run's position is (``epoch``: epochs completed, ``batch_in_epoch``: batches done in the next one, ``step``:
optimizer updates). Resuming restores weights, EMA, optimizer, scheduler, scaler, running averages, history and
every RNG, and starts the data sampler at the same batch — data order and augmentation depend only on
(seed, epoch, sample), see ``datvit.data.loader`` — so the resumed run computes what the uninterrupted one would.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import datvit
from datvit.inference.checkpoint_format import build_checkpoint, describe_arch_difference, read_datvit_checkpoint
from datvit.models import CheckpointError, load_checkpoint, load_state_dict_checked

from ..data.loader import create_dataset, create_loader, eval_transform, resolve_dataset_kind, train_transform
from ..utils.files import atomic_write_text, remove_stale_temp_files
from . import distributed as dist_utils
from .checkpointing import CheckpointManager, capture_rng_state, find_auto_resume, restore_rng_state
from .config import apply_recipe, args_to_dict, default_experiment_name, scaled_lr
from .metrics import RunningSum, format_summary_line, plot_curves, write_summary
from .modeling import (arch_record, count_parameters, create_model, load_model_config, reset_linear_layers,
                       resolve_model_kwargs)
from .precision import AmpPlan, autocast, resolve_amp
from .preemption import RunInterrupted, StopSignals


class TrainingError(RuntimeError):
    """A problem with the configuration or the data that the user can fix; the message says how."""


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite; the message names the step and the last good checkpoint."""


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def channels_for_mean(values: list[float], in_chans: int, name: str) -> list[float]:
    """Per-channel normalisation values for ``in_chans`` channels (one value is repeated)."""
    values = list(values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    raise TrainingError(f"--{name} has {len(values)} values for {in_chans} input channels")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    amp: Optional[AmpPlan] = None,
    info: Optional[dist_utils.DistInfo] = None,
    progress: bool = True,
    desc: str = "eval",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Loss (cross-entropy), top-1 and top-5 accuracy (%) over the loader's shard, summed over all ranks.

    Returns ``{"loss", "top1", "top5", "count", "corrupt"}`` (``corrupt``: this rank's unreadable files)."""
    info = info or dist_utils.DistInfo(device=device)
    amp = amp or AmpPlan(False, torch.float32, False)
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    corrupt = []
    for images, targets, bad in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                                     disable=not (progress and info.is_main)):
        corrupt.extend(bad)
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        correct1 += top[:, 0].sum().item()
        correct5 += top.any(dim=1).sum().item()
        count += targets.numel()
    loss_sum, correct1, correct5, count = dist_utils.all_reduce_sum([loss_sum, correct1, correct5, count], info)
    model.train(was_training)
    if not count:
        return {"loss": None, "top1": None, "top5": None, "count": 0, "corrupt": corrupt}
    return {"loss": loss_sum / count, "top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count,
            "count": int(count), "corrupt": corrupt}


class Trainer:
    """Sets up data, model, optimizer, schedule, EMA and checkpoints from resolved ``args``; ``fit()`` trains."""

    def __init__(self, args: argparse.Namespace, info: Optional[dist_utils.DistInfo] = None):
        self.args = args
        self.info = info or dist_utils.init_distributed(args.device)
        self.device = self.info.device
        self.is_main = self.info.is_main
        if not self.is_main:
            warnings.simplefilter("ignore")  # only rank 0 speaks
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self._setup_data()
        self._setup_model()
        self._setup_optimization()
        self._setup_run_dir()
        self.epoch = 0            # epochs completed
        self.batch_in_epoch = 0   # batches done in epoch `self.epoch`
        self.step = 0             # optimizer updates
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self.best = {"metric": None, "epoch": None}
        self.meters = self._fresh_meters()
        self.corrupt: dict[str, str] = {}
        self._rng_to_restore: Optional[dict] = None
        self.signals = StopSignals()       # installed by fit(); a flag the loop reads after every step
        self._stop_signal = 0              # the signal every rank agreed to stop on (0: none)
        self._bad_run: list[int] = []      # steps of the current run of consecutive non-finite losses
        self._last_saved: Optional[tuple[str, int]] = None  # (path, step) of the newest checkpoint written
        if args.resume:
            self._resume(args.resume_path)
            self._last_saved = (str(args.resume_path), self.step)
        seed_everything(args.seed + self.info.rank)  # training randomness (drop path, Mixup) differs per rank
        if self.is_main:
            for path in remove_stale_temp_files(self.run_dir):
                self.warn(f"removed {path}, a temporary file left by a write that was killed mid-way")
            atomic_write_text(yaml.safe_dump(args_to_dict(args), sort_keys=True), self.run_dir / "args.yaml")

    # -- setup ------------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stdout)

    def warn(self, message: str) -> None:
        if self.is_main:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    def _setup_data(self) -> None:
        args = self.args
        kind = resolve_dataset_kind(args.dataset, args.data_dir)
        apply_recipe(args, kind)
        if args.in_chans not in (1, 3):
            raise TrainingError(f"--in-chans {args.in_chans}: image datasets give 1 (grayscale) or 3 (RGB) channels")
        image_mode = "L" if args.in_chans == 1 else "RGB"
        args.mean = channels_for_mean(args.mean, args.in_chans, "mean")
        args.std = channels_for_mean(args.std, args.in_chans, "std")
        self.train_set = create_dataset(kind, args.data_dir, args.train_split, image_mode=image_mode,
                                        download=args.dataset_download)
        self.class_names = list(self.train_set.classes)
        try:
            self.eval_set = create_dataset(kind, args.data_dir, args.val_split, image_mode=image_mode,
                                           class_names=self.class_names)
        except FileNotFoundError as e:
            self.warn(f"no evaluation split ({e}); best.pth will follow the training loss")
            self.eval_set = None
        if args.num_classes is None:
            args.num_classes = len(self.class_names)
        elif args.num_classes < len(self.class_names):
            raise TrainingError(f"--num-classes {args.num_classes} but the dataset has {len(self.class_names)} classes")

    def _setup_model(self) -> None:
        args = self.args
        if args.model_config and not os.path.isfile(args.model_config):
            raise TrainingError(f"--model-config {args.model_config}: no such file")
        config = load_model_config(args.model_config) if args.model_config else None
        self.model_kwargs = resolve_model_kwargs(
            args.model, config, args.model_kwargs, num_classes=args.num_classes, in_chans=args.in_chans,
            img_size=args.img_size, drop_path_rate=args.drop_path, drop_rate=args.drop)
        if args.img_size is None:
            args.img_size = int(self.model_kwargs.get("img_size", 224))
        patch, stages = int(self.model_kwargs.get("patch_size", 4)), len(self.model_kwargs.get("dims") or [0] * 4)
        min_size = patch * 2 ** (stages - 1)  # = DAT.min_input_size, checked before building anything
        if args.img_size < min_size:
            raise TrainingError(f"--img-size {args.img_size} is below this model's minimum input {min_size} "
                                f"(patch {patch} × {2 ** (stages - 1)})")
        torch.manual_seed(args.seed)  # the same initial weights on every rank (and for EMA)
        model = create_model(args.model, self.model_kwargs)
        if args.linear_init == "torch":
            reset_linear_layers(model)
        self.n_params = count_parameters(model)
        for path in (args.initial_checkpoint, args.pretrained_path):
            if path:
                load_checkpoint(model, path, trust_checkpoint=getattr(args, "trust_checkpoint", False))
                self.log(f"loaded weights from {path}")
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(self.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.data_config = {"input_size": [args.in_chans, args.img_size, args.img_size], "mean": args.mean,
                            "std": args.std, "crop_pct": args.crop_pct, "interpolation": args.interpolation}
        try:
            self.train_set.transform = train_transform(
                args.img_size, args.mean, args.std, interpolation=args.train_interpolation, no_aug=args.no_aug,
                scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
                color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob, re_mode=args.remode,
                re_count=args.recount)
        except (AssertionError, KeyError) as e:  # timm asserts on an unknown --aa policy
            raise TrainingError(f"the augmentation flags (--aa {args.aa}, --remode {args.remode}) are not valid: "
                                f"{e}") from None
        if self.eval_set is not None:
            self.eval_set.transform = eval_transform(args.img_size, args.mean, args.std, args.crop_pct,
                                                     args.interpolation)
        info = self.info
        self.train_loader = create_loader(self.train_set, args.batch_size, training=True, workers=args.workers,
                                          seed=args.seed, rank=info.rank, world_size=info.world_size,
                                          pin_memory=args.pin_mem)
        self.updates_per_epoch = self.train_loader.sampler.epoch_length // args.batch_size
        if self.updates_per_epoch == 0:
            raise TrainingError(f"{len(self.train_set)} training images are fewer than one batch of "
                                f"{args.batch_size} × {info.world_size} processes; lower --batch-size")
        self.eval_loader = None
        if self.eval_set is not None:
            self.eval_loader = create_loader(self.eval_set, args.validation_batch_size or args.batch_size,
                                             training=False, workers=args.workers, seed=args.seed, rank=info.rank,
                                             world_size=info.world_size, pin_memory=args.pin_mem)

    def _setup_optimization(self) -> None:
        args = self.args
        global_batch = args.batch_size * self.info.world_size
        if args.lr is None:
            args.lr = scaled_lr(args.lr_base, global_batch, args.lr_base_size, args.lr_base_scale)
        opt_kwargs = {}
        if args.opt_eps is not None:
            opt_kwargs["eps"] = args.opt_eps
        if args.opt_betas is not None:
            opt_kwargs["betas"] = tuple(args.opt_betas)
        # timm puts norms, biases and model.no_weight_decay() (DAT's position tables) in a no-decay group.
        self.optimizer = create_optimizer_v2(self.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                             momentum=args.momentum, **opt_kwargs)
        self.amp = resolve_amp(self.device, args.amp, args.amp_dtype)
        if self.amp.message:
            self.warn(self.amp.message)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp.use_scaler else None
        self.ema = None
        if args.model_ema:
            self.ema = ModelEmaV3(self.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        self.scheduler = None
        if args.sched and args.sched != "none":
            self.scheduler, self.total_epochs = create_scheduler_v2(
                self.optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
                decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs,
                decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix,
                step_on_epochs=not args.sched_on_updates, updates_per_epoch=self.updates_per_epoch)
        else:
            self.total_epochs = args.epochs
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                               prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                               label_smoothing=args.smoothing, num_classes=args.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif args.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(args.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.train_model = self.model
        if self.info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)

    def _setup_run_dir(self) -> None:
        args = self.args
        args.resume_path = None
        if args.resume == "auto":
            found = find_auto_resume(args.output, args.experiment)
            if found is None:
                self.log(f"--resume auto: nothing to resume under {args.output}"
                         f"{'/' + args.experiment if args.experiment else ''}; starting a new run")
                args.resume = None
            else:
                args.resume_path = str(found)
        elif args.resume:
            if not os.path.isfile(args.resume):
                raise TrainingError(f"--resume {args.resume}: no such checkpoint")
            args.resume_path = args.resume
        if args.resume_path and not args.experiment:
            run_dir = Path(args.resume_path).parent
        else:
            name = args.experiment or default_experiment_name(args)
            run_dir = Path(args.output) / name
            if not args.resume_path and (run_dir / "last.pth").exists():
                i = 1
                while (Path(args.output) / f"{name}-{i}" / "last.pth").exists():
                    i += 1
                run_dir = Path(args.output) / f"{name}-{i}"
                self.warn(f"{Path(args.output) / name} already holds a run (use --resume auto to continue it); "
                          f"writing this one to {run_dir}")
        self.run_dir = Path(dist_utils.broadcast_object(str(run_dir), self.info))
        args.experiment = self.run_dir.name
        self.checkpoints = CheckpointManager(self.run_dir, args.checkpoint_hist)

    # -- checkpoints ------------------------------------------------------------------------------------------

    @staticmethod
    def _fresh_meters() -> dict[str, Any]:
        return {"loss": RunningSum(), "top1": RunningSum(), "seconds": 0.0, "samples": 0}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (call on every rank: the RNG states of all ranks are gathered)."""
        rng_all = dist_utils.gather_objects(capture_rng_state(), self.info)
        meters = {"loss": self.meters["loss"].state_dict(), "top1": self.meters["top1"].state_dict(),
                  "seconds": self.meters["seconds"], "samples": self.meters["samples"]}
        meters_all = dist_utils.gather_objects(meters, self.info)
        corrupt = self._all_corrupt()
        args = self.args
        training = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "rng": rng_all[0],
            "rng_per_rank": rng_all,
            "data_state": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": args.seed,
                           "batch_size": args.batch_size, "world_size": self.info.world_size},
            "meters": meters_all[0],
            "meters_per_rank": meters_all,
            "history": self.history,
            "best": dict(self.best),
            "corrupt_files": corrupt,
            "args": args_to_dict(args),
        }
        return build_checkpoint(
            self.model.state_dict(), arch=arch_record(args.model, self.model_kwargs), data_config=self.data_config,
            class_names=self.class_names, model_ema=self.ema.module.state_dict() if self.ema is not None else None,
            training=training)

    def save(self, epoch_end: Optional[int] = None, is_best: bool = False) -> None:
        """Write last.pth (+ checkpoint-<epoch>.pth, best.pth) — never over a good one with non-finite weights."""
        bad = self._first_nonfinite_tensor()
        if bad is not None:
            raise TrainingDiverged(f"{bad} is not finite at step {self.step} (epoch {self.epoch + 1}); nothing was "
                                   f"saved. {self._last_good_hint()}")
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
            named += [(f"optimizer state {k} of parameter {i}", v) for k, v in state.items()
                      if isinstance(v, torch.Tensor)]
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
        loaded = read_datvit_checkpoint(path, trust_checkpoint=getattr(self.args, "trust_checkpoint", False))
        ckpt = loaded.training
        if not loaded.is_datvit or "step" not in ckpt:
            raise TrainingError(f"{path} is not a datvit training checkpoint; to start from its weights use "
                                "--initial-checkpoint")
        if loaded.arch is not None:
            differs = describe_arch_difference(loaded.arch, arch_record(self.args.model, self.model_kwargs))
            if differs:
                raise CheckpointError(f"--resume {path}: the checkpoint was trained with another model ({differs}; "
                                      "checkpoint vs this run); resume with the run's --model/--model-kwargs, or "
                                      "start from its weights with --initial-checkpoint")
        load_state_dict_checked(self.model, loaded.model, path, reset_head_on_mismatch=False)
        if self.args.no_resume_opt:
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
        same_layout = (data_state.get("world_size") == self.info.world_size
                       and data_state.get("batch_size") == self.args.batch_size)
        if self.batch_in_epoch and not same_layout:
            done = self.batch_in_epoch * data_state["batch_size"] * data_state["world_size"]
            self.batch_in_epoch = done // (self.args.batch_size * self.info.world_size)
            self.warn("batch size or number of processes changed since the checkpoint: the epoch continues near, "
                      "not exactly at, where it stopped")
        per_rank_meters = ckpt.get("meters_per_rank") or [ckpt.get("meters") or {}]
        meters = per_rank_meters[self.info.rank] if same_layout else {}
        self.meters = {"loss": RunningSum.from_state(meters.get("loss")), "top1": RunningSum.from_state(meters.get("top1")),
                       "seconds": meters.get("seconds", 0.0), "samples": meters.get("samples", 0)}
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

    def _record_corrupt(self, samples: list) -> None:
        for sample in samples:
            if sample.path not in self.corrupt:
                self.corrupt[sample.path] = sample.error
                self.warn(f"skipped unreadable image {sample.path} ({sample.error})")

    # -- training ---------------------------------------------------------------------------------------------

    def _train_step(self, images: Optional[torch.Tensor], targets: Optional[torch.Tensor],
                    use_mixup: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer update; returns (summed loss, correct top-1, samples) as tensors/int on the device."""
        args = self.args
        weight = 1.0
        if use_mixup and images is not None and images.shape[0] == 1:
            images = None  # Mixup needs pairs: a batch left with one readable image would be trimmed to none
        if images is None:  # every image of this batch was unreadable: under DDP all ranks must still step
            c, s = args.in_chans, args.img_size
            images = torch.zeros(1, c, s, s)
            targets = torch.zeros(1, dtype=torch.long)
            weight, use_mixup = 0.0, False
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if use_mixup and images.shape[0] % 2:
            images, targets = images[:-1], targets[:-1]
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if use_mixup:
            images, targets = self.mixup(images, targets)
        with autocast(self.device, self.amp):
            logits = self.train_model(images)
            loss = self.criterion(logits, targets)
        if weight != 1.0:
            loss = loss * weight
        self.optimizer.zero_grad(set_to_none=True)
        params = self.model.parameters()
        # backward on every rank even for a non-finite loss: DDP's gradient all-reduce needs all of them
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        # one all-reduce of two integers per step: every rank skips the same steps and stops after the same one
        nonfinite, self._stop_signal = dist_utils.max_over_ranks(
            [not bool(torch.isfinite(loss.detach()).all()), self.signals.requested or 0], self.info)
        self.step += 1
        if nonfinite:  # the update is skipped (as GradScaler skips an overflowing fp16 step): weights stay good
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_run.append(self.step)
            self._skipped()["nonfinite_loss"] += 1
        else:
            self._bad_run.clear()
            if self.scaler is not None:
                scale = self.scaler.get_scale()
                if args.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    dispatch_clip_grad(params, args.clip_grad, mode=args.clip_mode)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scaler.get_scale() < scale:  # the scale only drops when inf/NaN gradients skipped the step
                    self._skipped()["amp_overflow"] += 1
            else:
                if args.clip_grad:
                    dispatch_clip_grad(params, args.clip_grad, mode=args.clip_mode)
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
        if self.scheduler is not None:  # the schedule follows the data position, skipped steps included
            self.scheduler.step_update(num_updates=self.step)
        if nonfinite:
            return torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
        n = int(hard_targets.numel() * weight)
        correct = (logits.detach().argmax(dim=1) == hard_targets).sum() * weight
        return loss.detach().float() * n, correct, n

    def _current_lr(self) -> float:
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def train_epoch(self) -> dict[str, Any]:
        """Train from the current position to the end of epoch ``self.epoch``."""
        args, epoch = self.args, self.epoch
        sampler = self.train_loader.sampler
        sampler.set_epoch(epoch, start=self.batch_in_epoch * args.batch_size)
        use_mixup = self.mixup is not None and not (args.mixup_off_epoch and epoch >= args.mixup_off_epoch)
        self.train_model.train()
        pbar = tqdm(total=self.updates_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                    dynamic_ncols=True, leave=False, disable=not self.is_main or args.no_progress, file=sys.stderr)
        if self._rng_to_restore is not None:  # exactly where the checkpoint left every generator
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        t_start = time.perf_counter()
        session_samples = 0
        window = [0.0, 0.0, 0]  # loss sum, correct, samples since the last curve point
        for batch in self.train_loader:
            self._record_corrupt(batch.corrupt)
            loss_sum, correct, n = self._train_step(batch.images, batch.targets, use_mixup)
            self.batch_in_epoch += 1
            session_samples += n
            window[0] += loss_sum
            window[1] += correct
            window[2] += n
            last_batch = self.batch_in_epoch >= self.updates_per_epoch
            if self.step % args.log_interval == 0 or last_batch:
                self._flush_window(window, pbar, session_samples * self.info.world_size,
                                   time.perf_counter() - t_start)
            pbar.update(1)
            if (args.checkpoint_interval and self.step % args.checkpoint_interval == 0 and not last_batch
                    and not self._bad_run):  # no step checkpoint inside a run of non-finite losses
                self._flush_window(window, pbar, session_samples * self.info.world_size,
                                   time.perf_counter() - t_start)
                self.meters["seconds"] += time.perf_counter() - t_start
                self.save()
                t_start = time.perf_counter()
                session_samples = 0
            if self.args.max_bad_steps and len(self._bad_run) >= self.args.max_bad_steps:
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
        loss, top1 = self.meters["loss"], self.meters["top1"]
        loss_total, top1_total, count = dist_utils.all_reduce_sum([loss.total, top1.total, loss.count], self.info)
        return {"loss": loss_total / count if count else float("nan"),
                "top1": top1_total / count if count else float("nan"), "seconds": seconds,
                "images_per_s": count / seconds if seconds > 0 else 0.0}

    def _diverged_message(self) -> str:
        first, last = self._bad_run[0], self._bad_run[-1]
        return (f"the loss was not finite for {len(self._bad_run)} consecutive steps (steps {first}–{last}, epoch "
                f"{self.epoch + 1}; --max-bad-steps {self.args.max_bad_steps}); their updates were skipped and "
                f"nothing was saved after them. {self._last_good_hint()}")

    def _stop_on_signal(self) -> None:
        """Write the checkpoint of the position reached (unless the step's checkpoint was just written) and raise
        ``RunInterrupted``. At an epoch's last batch the checkpoint holds the whole epoch as done
        (``batch_in_epoch == updates_per_epoch``): the resumed run goes straight to the epoch's evaluation."""
        if self._last_saved is None or self._last_saved[1] != self.step or self._last_saved[0] != str(
                self.checkpoints.last):
            self.save()
        name = signal.Signals(self._stop_signal).name
        raise RunInterrupted(f"stopped on {name} after step {self.step} (epoch {self.epoch + 1}, batch "
                             f"{self.batch_in_epoch}/{self.updates_per_epoch}); checkpoint: {self.checkpoints.last}. "
                             "Continue with the same command plus --resume auto", self._stop_signal)

    def _flush_window(self, window: list, pbar: Optional[tqdm], session_images: int, elapsed: float) -> None:
        """Move the step accumulators into the epoch's averages, add a curve point, refresh the progress bar."""
        if window[2]:
            loss_sum = float(window[0])
            correct = float(window[1])
            n = window[2]
            self.meters["loss"].add(loss_sum, n)
            self.meters["top1"].add(100.0 * correct, n)
            self.meters["samples"] += n
            self.history["steps"].append({
                "epoch": self.epoch + self.batch_in_epoch / self.updates_per_epoch, "step": self.step,
                "loss": loss_sum / n, "top1": 100.0 * correct / n, "lr": self._current_lr()})
            window[:] = [0.0, 0.0, 0]
        if pbar is not None and not pbar.disable:
            pbar.set_postfix(loss=f"{self.meters['loss'].mean:.4f}", acc=f"{self.meters['top1'].mean:.2f}",
                             lr=f"{self._current_lr():.3g}",
                             img_s=f"{session_images / elapsed:.0f}" if elapsed > 0 else "-", refresh=False)

    def _evaluate_epoch(self) -> dict[str, Any]:
        row: dict[str, Any] = {"eval_loss": None, "eval_top1": None, "eval_top5": None}
        if self.eval_loader is None:
            return row
        progress = not self.args.no_progress
        result = evaluate(self.model, self.eval_loader, self.device, self.amp, self.info, progress=progress,
                          channels_last=self.args.channels_last)
        self._record_corrupt(result["corrupt"])
        row.update(eval_loss=result["loss"], eval_top1=result["top1"], eval_top5=result["top5"])
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.eval_loader, self.device, self.amp, self.info, progress=progress,
                           desc="eval EMA", channels_last=self.args.channels_last)
            row.update(ema_eval_loss=ema["loss"], ema_eval_top1=ema["top1"], ema_eval_top5=ema["top5"])
        return row

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the final summary (also printed)."""
        args = self.args
        self.log(f"training {args.model} ({self.n_params / 1e6:.2f}M parameters) on {args.dataset} "
                 f"({len(self.train_set)} training images, {len(self.class_names)} classes) for {args.epochs} epochs "
                 f"on {self.info.world_size} × {self.device.type}, global batch "
                 f"{args.batch_size * self.info.world_size}, lr {args.lr:.3g}; writing to {self.run_dir}")
        with self.signals:
            while self.epoch < args.epochs:
                train = self.train_epoch()
                row = {"epoch": self.epoch + 1, "train_loss": train["loss"], **self._evaluate_epoch(),
                       "lr": self._current_lr(), "images/s": train["images_per_s"], "seconds": train["seconds"]}
                if self.scheduler is not None:
                    self.scheduler.step(self.epoch + 1, row["eval_top1"])
                metric = row["eval_top1"] if row["eval_top1"] is not None else -row["train_loss"]
                is_best = self.best["metric"] is None or metric > self.best["metric"]
                if is_best:
                    self.best = {"metric": metric, "epoch": self.epoch + 1}
                self.history["epochs"].append(row)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.meters = self._fresh_meters()
                self.save(epoch_end=self.epoch, is_best=is_best)
                if self.is_main:
                    write_summary(self.run_dir, self.history["epochs"])
                    plot_curves(self.run_dir, self.history["epochs"], self.history["steps"])
                self.log(format_summary_line(row, args.epochs))
                skipped = self._skipped()
                if any(skipped.values()):
                    self.warn(f"skipped optimizer steps so far: {skipped['nonfinite_loss']} with a non-finite loss, "
                              f"{skipped['amp_overflow']} fp16 overflows (GradScaler)")
                # a signal that came during the evaluation or the epoch's checkpoint: stop with that checkpoint
                self._stop_signal = dist_utils.max_over_ranks([self.signals.requested or 0], self.info)[0]
                if self._stop_signal and self.epoch < args.epochs:
                    self._stop_on_signal()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        corrupt = self._all_corrupt()
        if corrupt and self.is_main:
            lines = "".join(f"{p}\t{e}\n" for p, e in corrupt)
            (self.run_dir / "corrupt_files.txt").write_text(lines)
            self.warn(f"{len(corrupt)} unreadable image file(s) were skipped; listed in "
                      f"{self.run_dir / 'corrupt_files.txt'}")
        last = self.history["epochs"][-1] if self.history["epochs"] else {}
        summary = {"run_dir": str(self.run_dir), "epochs": self.epoch, "steps": self.step,
                   "best_metric": self.best["metric"], "best_epoch": self.best["epoch"],
                   "final_top1": last.get("eval_top1"), "final_top5": last.get("eval_top5"),
                   "corrupt_files": len(corrupt), "parameters": self.n_params,
                   "skipped_nonfinite_steps": self._skipped()["nonfinite_loss"],
                   "skipped_amp_overflow_steps": self._skipped()["amp_overflow"],
                   "train_seconds": sum(r["seconds"] for r in self.history["epochs"])}
        if self.best["metric"] is not None:
            what = "top-1" if last.get("eval_top1") is not None else "-train loss"
            self.log(f"done: best {what} {self.best['metric']:.2f} at epoch {self.best['epoch']}; checkpoints, "
                     f"summary.csv and plots in {self.run_dir}")
        return summary


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``datvit train`` with parsed arguments (joins/leaves the torchrun process group)."""
    info = dist_utils.init_distributed(args.device)
    try:
        return Trainer(args, info).fit()
    finally:
        dist_utils.cleanup()
