"""Image classification as a training task: ImageNet-style folders or Fashion-MNIST, a DAT classifier, timm's
transforms, Mixup/CutMix and label smoothing, top-1/top-5 evaluation — what ``datvit train`` runs."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datvit.inference.checkpoint_format import describe_arch_difference
from datvit.models import CheckpointError, load_checkpoint

from ..data.loader import FirstSamples, create_dataset, eval_transform, resolve_dataset_kind, train_transform
from ..models.factory import arch_record, build_model, count_parameters, load_model_config, resolve_model_kwargs
from . import distributed as dist_utils
from .config import TrainConfig, recipe_for
from .errors import TrainingError
from .modeling import reset_linear_layers
from .precision import AmpPlan, autocast
from .task import MetricSpec, StepOutput, Task


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
    loader: DataLoader,
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
    for images, targets, bad in tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and info.is_main)
    ):
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
    return {
        "loss": loss_sum / count,
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "count": int(count),
        "corrupt": corrupt,
    }


class ClassificationTask(Task):
    """``datvit train``: a DAT classifier on an image folder or Fashion-MNIST with the papers' recipe."""

    name = "classification"
    metrics = MetricSpec(
        best="eval_top1",
        eval_columns=(("eval_loss", "eval_loss", ".4f"), ("eval_top1", "top1", ".2f"), ("eval_top5", "top5", ".2f")),
        step_metrics=("top1",),
        plot=("accuracy", "accuracy", "accuracy (%)", (("eval_top1", "eval top-1"), ("eval_top5", "eval top-5"))),
    )

    run_config_cls = TrainConfig

    def recipe(self, settings: dict[str, Any]) -> dict[str, Any]:
        return recipe_for(resolve_dataset_kind(settings.get("dataset"), settings.get("data_dir")))

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        values = dict(values)
        kind = values["dataset"] = resolve_dataset_kind(values.get("dataset"), values.get("data_dir"))
        if isinstance(values.get("aa"), str) and values["aa"].lower() in ("", "none"):
            values["aa"] = None
        in_chans = values["in_chans"]
        if in_chans not in (1, 3):
            raise TrainingError(f"--in-chans {in_chans}: image datasets give 1 (grayscale) or 3 (RGB) channels")
        values["mean"] = channels_for_mean(values["mean"], in_chans, "mean")
        values["std"] = channels_for_mean(values["std"], in_chans, "std")
        self._open_datasets(kind, values)
        if values.get("num_classes") is None:
            values["num_classes"] = len(self.class_names)
        elif values["num_classes"] < len(self.class_names):
            raise TrainingError(
                f"--num-classes {values['num_classes']} but the dataset has {len(self.class_names)} classes"
            )
        model_config = values.get("model_config")
        if model_config and not os.path.isfile(model_config):
            raise TrainingError(f"--model-config {model_config}: no such file")
        self.model_kwargs = resolve_model_kwargs(
            values["model"],
            load_model_config(model_config) if model_config else None,
            values.get("model_kwargs") or {},
            num_classes=values["num_classes"],
            in_chans=in_chans,
            img_size=values.get("img_size"),
            drop_path_rate=values.get("drop_path"),
            drop_rate=values.get("drop"),
        )
        if values.get("img_size") is None:
            values["img_size"] = int(self.model_kwargs.get("img_size", 224))
        patch, stages = int(self.model_kwargs.get("patch_size", 4)), len(self.model_kwargs.get("dims") or [0] * 4)
        min_size = patch * 2 ** (stages - 1)  # = DAT.min_input_size, checked before building anything
        if values["img_size"] < min_size:
            raise TrainingError(
                f"--img-size {values['img_size']} is below this model's minimum input {min_size} "
                f"(patch {patch} × {2 ** (stages - 1)})"
            )
        return values

    def _open_datasets(self, kind: str, values: dict[str, Any]) -> None:
        image_mode = "L" if values["in_chans"] == 1 else "RGB"
        data_dir = values.get("data_dir")
        self.train_set = create_dataset(
            kind, data_dir, values["train_split"], image_mode=image_mode, download=values.get("dataset_download", False)
        )
        self.class_names = list(self.train_set.classes)
        try:
            self.eval_set = create_dataset(
                kind, data_dir, values["val_split"], image_mode=image_mode, class_names=self.class_names
            )
        except FileNotFoundError as e:
            self.warn(f"no evaluation split ({e}); best.pth will follow the training loss")
            self.eval_set = None
        if values.get("train_subset"):
            self.train_set = FirstSamples(self.train_set, values["train_subset"])
        if values.get("eval_subset") and self.eval_set is not None:
            self.eval_set = FirstSamples(self.eval_set, values["eval_subset"])

    def build_model(self) -> nn.Module:
        config = self.config
        model = build_model(config.model, self.model_kwargs)
        if config.linear_init == "torch":
            reset_linear_layers(model)
        self.n_params = count_parameters(model)
        for path in (config.initial_checkpoint, config.pretrained_path):
            if path:
                load_checkpoint(model, path, trust_checkpoint=config.trust_checkpoint)
                self.log(f"loaded weights from {path}")
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.data_config = {
            "input_size": [config.in_chans, config.img_size, config.img_size],
            "mean": config.mean,
            "std": config.std,
            "crop_pct": config.crop_pct,
            "interpolation": config.interpolation,
        }
        self._setup_loss()
        return model

    def _setup_loss(self) -> None:
        config = self.config
        self.mixup = None
        if config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None:
            self.mixup = Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                cutmix_minmax=config.cutmix_minmax,
                prob=config.mixup_prob,
                switch_prob=config.mixup_switch_prob,
                mode=config.mixup_mode,
                label_smoothing=config.smoothing,
                num_classes=config.num_classes,
            )
            self.criterion = SoftTargetCrossEntropy()
        elif config.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(config.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def attach_transforms(self, model: nn.Module) -> None:
        config = self.config
        try:
            self.train_set.transform = train_transform(
                config.img_size,
                config.mean,
                config.std,
                interpolation=config.train_interpolation,
                no_aug=config.no_aug,
                scale=config.scale,
                ratio=config.ratio,
                hflip=config.hflip,
                vflip=config.vflip,
                color_jitter=config.color_jitter,
                auto_augment=config.aa,
                re_prob=config.reprob,
                re_mode=config.remode,
                re_count=config.recount,
            )
        except (AssertionError, KeyError) as e:  # timm asserts on an unknown --aa policy
            raise TrainingError(
                f"the augmentation flags (--aa {config.aa}, --remode {config.remode}) are not valid: {e}"
            ) from None
        if self.eval_set is not None:
            self.eval_set.transform = eval_transform(self.data_config)

    def training_loss(self, model: nn.Module, batch: Any, epoch: int) -> StepOutput:
        config = self.config
        images, targets = batch.images, batch.targets
        use_mixup = self.mixup is not None and not (config.mixup_off_epoch and epoch >= config.mixup_off_epoch)
        weight = 1.0
        if use_mixup and images is not None and images.shape[0] == 1:
            images = None  # Mixup needs pairs: a batch left with one readable image would be trimmed to none
        if images is None:  # every image of this batch was unreadable: under DDP all ranks must still step
            c, s = config.in_chans, config.img_size
            images = torch.zeros(1, c, s, s)
            targets = torch.zeros(1, dtype=torch.long)
            weight, use_mixup = 0.0, False
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if use_mixup and images.shape[0] % 2:
            images, targets = images[:-1], targets[:-1]
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if use_mixup:
            images, targets = self.mixup(images, targets)
        logits = model(images)
        loss = self.criterion(logits, targets)
        if weight != 1.0:
            loss = loss * weight
        n = int(hard_targets.numel() * weight)
        correct = (logits.detach().argmax(dim=1) == hard_targets).sum() * weight
        return StepOutput(loss, n, {"top1": 100.0 * correct})

    def evaluate(self, model: nn.Module, loader: DataLoader, amp: AmpPlan, progress: bool, desc: str) -> dict[str, Any]:
        result = evaluate(
            model,
            loader,
            self.device,
            amp,
            self.info,
            progress=progress,
            desc=desc,
            channels_last=self.config.channels_last,
        )
        return {
            "loss": result["loss"],
            "top1": result["top1"],
            "top5": result["top5"],
            "problems": [(s.path, s.error) for s in result["corrupt"]],
        }

    def describe(self, model: nn.Module) -> str:
        config = self.config
        return (
            f"training {config.model} ({self.n_params / 1e6:.2f}M parameters) on {config.dataset} "
            f"({len(self.train_set)} training images, {len(self.class_names)} classes)"
        )

    def checkpoint_record(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "arch": arch_record(self.config.model, self.model_kwargs),
            "data_config": self.data_config,
        }

    def check_resume(self, loaded: Any, path: str) -> None:
        if loaded.arch is not None:
            differs = describe_arch_difference(loaded.arch, arch_record(self.config.model, self.model_kwargs))
            if differs:
                raise CheckpointError(
                    f"--resume {path}: the checkpoint was trained with another model ({differs}; "
                    "checkpoint vs this run); resume with the run's --model/--model-kwargs, or "
                    "start from its weights with --initial-checkpoint"
                )

    def run_summary(self, last_row: dict[str, Any]) -> dict[str, Any]:
        return {"final_top1": last_row.get("eval_top1"), "final_top5": last_row.get("eval_top5")}
