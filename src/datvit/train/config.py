"""The typed configuration of a training run: frozen dataclasses resolved once, before anything is built.

A run's settings come in layers, later ones winning: the dataclass defaults < the task's recipe (the papers'
ImageNet recipe, the Fashion-MNIST recipe, the authors' dense configs) < a YAML file < the command line. ``None``
in a YAML file or a flag means "unset", so the recipe fills it. :func:`merge_settings` combines the layers
(checking every key against the dataclass), the task fills in what depends on the data and the model (class count,
input size, normalisation), the engine what depends on the processes (learning rate from the global batch, the run
directory) — and the result is one frozen :class:`EngineConfig` subclass that is saved as the run's ``args.yaml``,
stored in every checkpoint and read, never written, by the engine and the tasks.

The keys are timm ``train.py``'s flag names with ``_`` for ``-``; the command line (``datvit.cli``) only collects
which flags were given.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import math
import os
from typing import Any, Iterable, Mapping, Optional, TypeVar

import yaml
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from ..data.fashion_mnist import MEAN as FMNIST_MEAN
from ..data.fashion_mnist import STD as FMNIST_STD

# The papers' ImageNet-1k recipe. lr is derived from lr_base × global batch / lr_base_size.
IMAGENET_RECIPE: dict[str, Any] = dict(
    model="dat_tiny",
    in_chans=3,
    img_size=None,
    mean=list(IMAGENET_MEAN),
    std=list(IMAGENET_STD),
    crop_pct=0.875,
    interpolation="bicubic",
    train_interpolation="bicubic",
    batch_size=128,
    epochs=300,
    opt="adamw",
    lr_base=1e-3,
    lr_base_size=1024,
    weight_decay=0.05,
    sched="cosine",
    warmup_epochs=20,
    warmup_lr=1e-6,
    min_lr=1e-5,
    clip_grad=5.0,
    smoothing=0.1,
    aa="rand-m9-mstd0.5-inc1",
    reprob=0.25,
    remode="pixel",
    mixup=0.8,
    cutmix=1.0,
    scale=[0.08, 1.0],
    ratio=[3 / 4, 4 / 3],
    hflip=0.5,
    color_jitter=0.4,
    model_ema=True,
    model_ema_decay=0.9998,
    linear_init="model",
)
# Fashion-MNIST, sized for a few minutes on 2 CPU cores: a small DAT at 32×32 (the 28×28 images resized),
# flips only, one-cycle-like cosine schedule with a short warm-up, no Mixup/EMA/drop path (too short a run to
# benefit: drop path 0.1 cost ~4 points after 1 epoch), PyTorch's default Linear init (learns faster early).
FASHION_MNIST_RECIPE: dict[str, Any] = dict(
    model="dat_nano",
    in_chans=1,
    img_size=32,
    mean=list(FMNIST_MEAN),
    std=list(FMNIST_STD),
    crop_pct=1.0,
    interpolation="bicubic",
    train_interpolation="bicubic",
    batch_size=128,
    epochs=3,
    opt="adamw",
    lr=1e-3,
    lr_base=1e-3,
    lr_base_size=1024,
    weight_decay=0.05,
    sched="cosine",
    warmup_epochs=0.3,
    warmup_lr=1e-5,
    min_lr=1e-5,
    clip_grad=5.0,
    smoothing=0.1,
    aa=None,
    reprob=0.0,
    remode="pixel",
    mixup=0.0,
    cutmix=0.0,
    scale=[1.0, 1.0],
    ratio=[1.0, 1.0],
    hflip=0.5,
    color_jitter=None,
    model_ema=False,
    model_ema_decay=0.999,
    drop_path=0.0,
    linear_init="torch",
)
RECIPES = {"folder": IMAGENET_RECIPE, "fashion_mnist": FASHION_MNIST_RECIPE}


class ConfigError(ValueError):
    """A setting that cannot be used: an unknown key, a value of the wrong kind, or settings that contradict."""


def default_workers() -> int:
    """DataLoader workers per process: one core is left to the training process itself, at most four."""
    return min(4, max((os.cpu_count() or 1) - 1, 0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """What the training engine reads, shared by every task: optimizer and schedule, precision and devices,
    loaders, output, checkpoints and resume. ``None`` values are filled by the task's recipe or derived
    (``lr`` from ``lr_base``); ``epochs`` or ``iters`` gives the length (``iters`` is rounded up to whole
    epochs by the engine)."""

    # loaders
    workers: int = dataclasses.field(default_factory=default_workers)
    pin_mem: bool = False
    # optimizer and schedule
    batch_size: Optional[int] = None
    validation_batch_size: Optional[int] = None
    epochs: Optional[int] = None
    iters: Optional[int] = None
    opt: Optional[str] = None
    opt_eps: Optional[float] = None
    opt_betas: Optional[list[float]] = None
    momentum: float = 0.9
    opt_fused: Optional[bool] = None
    weight_decay: Optional[float] = None
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    lr: Optional[float] = None
    lr_base: Optional[float] = None
    lr_base_size: Optional[int] = None
    lr_base_scale: str = "linear"
    sched: Optional[str] = None
    sched_on_updates: bool = True
    warmup_epochs: Optional[float] = None
    warmup_iters: Optional[int] = None
    warmup_lr: Optional[float] = None
    warmup_ratio: Optional[float] = None
    warmup_prefix: bool = False
    min_lr: Optional[float] = None
    cooldown_epochs: int = 0
    decay_epochs: float = 90
    decay_milestones: list[int] = dataclasses.field(default_factory=lambda: [90, 180, 270])
    decay_rate: float = 0.1
    # precision and devices
    amp: bool = False
    amp_dtype: str = "bfloat16"
    device: Optional[str] = None
    deterministic: bool = False
    seed: int = 42
    max_bad_steps: int = 3
    # output and checkpoints
    output: str = "output/train"
    experiment: Optional[str] = None
    checkpoint_hist: int = 10
    checkpoint_interval: int = 1000
    log_interval: int = 50
    no_progress: bool = False
    # where researchers look: TensorBoard event files beside summary.csv (None: when tensorboard is installed) and
    # Weights & Biases (off unless asked; WANDB_MODE=offline writes the run locally)
    tensorboard: Optional[bool] = None
    wandb: bool = False
    wandb_project: Optional[str] = None
    # weight averaging, memory and resume
    model_ema: Optional[bool] = None
    model_ema_decay: Optional[float] = None
    model_ema_warmup: bool = False
    grad_checkpointing: bool = False
    sync_bn: bool = False
    resume: Optional[str] = None
    trust_checkpoint: bool = False
    no_resume_opt: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(EngineConfig):
    """``datvit train``: image classification on an image folder or Fashion-MNIST."""

    # dataset
    data_dir: Optional[str] = None
    dataset: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    dataset_download: bool = False
    # the first N images of each split only (smoke tests and quick looks; None: all)
    train_subset: Optional[int] = None
    eval_subset: Optional[int] = None
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    interpolation: Optional[str] = None
    # model
    model: Optional[str] = None
    model_config: Optional[str] = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained_path: Optional[str] = None
    initial_checkpoint: Optional[str] = None
    linear_init: Optional[str] = None
    drop: Optional[float] = None
    drop_path: Optional[float] = None
    channels_last: bool = False
    # augmentation and regularisation
    no_aug: bool = False
    scale: Optional[list[float]] = None
    ratio: Optional[list[float]] = None
    hflip: Optional[float] = None
    vflip: float = 0.0
    color_jitter: Optional[float] = None
    aa: Optional[str] = None
    train_interpolation: Optional[str] = None
    reprob: Optional[float] = None
    remode: Optional[str] = None
    recount: int = 1
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    cutmix_minmax: Optional[list[float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mixup_off_epoch: int = 0
    smoothing: Optional[float] = None


C = TypeVar("C", bound=EngineConfig)

# settings given as dicts that a later layer updates key by key instead of replacing
_MERGED_DICTS = ("model_kwargs", "aug_kwargs", "head_kwargs")
# the two units of a run's length: a layer that gives one drops the other from the layers below it
_LENGTHS = ("epochs", "iters")


def config_defaults(cls: type) -> dict[str, Any]:
    """Every field of a config class with its default (one instance built: default factories run once)."""
    default = cls()
    return {f.name: getattr(default, f.name) for f in dataclasses.fields(cls)}


def settings_device(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Optional[str]:
    """The ``device`` the last layer that names one asks for (needed before the processes are set up)."""
    return next((dict(layer)["device"] for _, layer in reversed(list(layers)) if dict(layer).get("device")), None)


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_keys(cls: type, settings: Mapping[str, Any], where: str) -> None:
    """Every key of ``settings`` names a field of ``cls``; otherwise a :class:`ConfigError` that names the
    unknown keys (with the closest field name as a hint)."""
    known = config_fields(cls)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(f"{where}: unknown option(s) {', '.join(hints)}")


def merge_settings(cls: type, layers: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The layers ``(name, settings)`` combined, later ones winning; ``None`` values are unset. The dict
    settings (``model_kwargs``, ...) are merged key by key, and a layer that gives ``epochs`` or ``iters``
    drops the other unit from the layers below it."""
    merged: dict[str, Any] = {}
    for where, settings in layers:
        settings = normalise_keys(settings)
        check_keys(cls, settings, where)
        given = {k: v for k, v in settings.items() if v is not None}
        for unit, other in (_LENGTHS, _LENGTHS[::-1]):
            if unit in given and other not in given:
                merged.pop(other, None)
        for key, value in given.items():
            if key in _MERGED_DICTS and isinstance(value, Mapping):
                value = {**merged.get(key, {}), **normalise_keys(value)}
            merged[key] = value
    return merged


def build_config(cls: type[C], values: Mapping[str, Any]) -> C:
    """The frozen config from resolved ``values`` (fields not given keep their defaults)."""
    check_keys(cls, values, cls.__name__)
    return cls(**values)


def config_to_dict(config: EngineConfig) -> dict[str, Any]:
    """A config as plain YAML/checkpoint-safe data, keys sorted (``args.yaml`` and the checkpoints' ``args``)."""
    return {f.name: to_plain(getattr(config, f.name)) for f in sorted(dataclasses.fields(config), key=lambda f: f.name)}


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Iterable[str] = ("resume", "trust_checkpoint", "no_resume_opt"),
) -> list[str]:
    """``key: saved → current`` for every setting that differs between two configs as plain data."""
    skip = set(ignore)
    keys = sorted((set(saved) | set(current)) - skip)
    return [
        f"{k}: {saved.get(k)!r} → {current.get(k)!r}"
        for k in keys
        if to_plain(saved.get(k)) != to_plain(current.get(k))
    ]


def parse_literal(text: str) -> Any:
    """'[32, 64]' → list, '0.1' → float, 'true' → True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def normalise_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """YAML keys may use '-' like the flags; the config fields use '_'."""
    return {str(k).replace("-", "_"): v for k, v in config.items()}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or JSON) mapping; a clear error for anything else. A name of a config shipped with datvit
    (``demo_fashion_mnist``) works from any directory."""
    from ..configs import resolve_config_path

    with open(resolve_config_path(path)) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value, not a {type(data).__name__}")
    return normalise_keys(data)


def recipe_for(kind: str) -> dict[str, Any]:
    """The classification recipe of a dataset kind ('folder': ImageNet, 'fashion_mnist')."""
    return dict(RECIPES[kind])


def scaled_lr(lr_base: float, global_batch: int, lr_base_size: int, scale: str = "linear") -> float:
    """lr_base at lr_base_size, scaled to ``global_batch`` linearly (the papers) or by square root."""
    ratio = global_batch / lr_base_size
    return lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)


def resolve_learning_rate(values: dict[str, Any], world_size: int) -> dict[str, Any]:
    """``lr`` from ``lr_base`` when unset (scaled to the global batch), and mmcv's warm-up start
    ``warmup_lr = lr × warmup_ratio`` when a ratio is given."""
    values = dict(values)
    if values.get("lr") is None:
        values["lr"] = scaled_lr(
            values["lr_base"],
            values["batch_size"] * world_size,
            values["lr_base_size"],
            values.get("lr_base_scale", "linear"),
        )
    if values.get("warmup_ratio") is not None:
        values["warmup_lr"] = values["lr"] * values["warmup_ratio"]
    return values


def default_experiment_name(values: Mapping[str, Any]) -> str:
    """timm's run-directory naming: date-time, model (or preset), image (or crop) size."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = values.get("model") or values.get("preset") or "run"
    size = values.get("img_size") or values.get("crop_size")
    return f"{stamp}-{name}" + (f"-{size}" if size else "")


def to_plain(value: Any) -> Any:
    """Settings as YAML/checkpoint-safe values (tuples → lists, paths → str)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
