"""``datvit train`` arguments: timm ``train.py``'s flag names, a YAML config whose values are defaults, and
per-dataset recipes that fill in whatever neither the flags nor the YAML set.

Resolution order (later wins): recipe of the dataset (``RECIPES``) < YAML given with ``-c/--config`` < flags.
Recipe-driven arguments default to None in the parser so the recipe can tell "unset" from "set".
"""
from __future__ import annotations

import argparse
import ast
import datetime
import math
import os
import sys
from typing import Any, Optional, Sequence

import yaml

from ..data.fashion_mnist import MEAN as FMNIST_MEAN
from ..data.fashion_mnist import STD as FMNIST_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The papers' ImageNet-1k recipe (dat-spec §5). lr is derived from lr_base × global batch / lr_base_size.
IMAGENET_RECIPE: dict[str, Any] = dict(
    model="dat_tiny", in_chans=3, img_size=None, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), crop_pct=0.875,
    interpolation="bicubic", train_interpolation="bicubic", batch_size=128, epochs=300,
    opt="adamw", lr_base=1e-3, lr_base_size=1024, weight_decay=0.05, sched="cosine", warmup_epochs=20,
    warmup_lr=1e-6, min_lr=1e-5, clip_grad=5.0, smoothing=0.1, aa="rand-m9-mstd0.5-inc1", reprob=0.25,
    remode="pixel", mixup=0.8, cutmix=1.0, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5, color_jitter=0.4,
    model_ema=True, model_ema_decay=0.9998, linear_init="model",
)
# Fashion-MNIST, sized for a few minutes on 2 CPU cores: a small DAT at 32×32 (the 28×28 images resized),
# flips only, one-cycle-like cosine schedule with a short warm-up, no Mixup/EMA/drop path (too short a run to
# benefit: drop path 0.1 cost ~4 points after 1 epoch), PyTorch's default Linear init (learns faster early).
FASHION_MNIST_RECIPE: dict[str, Any] = dict(
    model="dat_nano", in_chans=1, img_size=32, mean=list(FMNIST_MEAN), std=list(FMNIST_STD), crop_pct=1.0,
    interpolation="bicubic", train_interpolation="bicubic", batch_size=128, epochs=3,
    opt="adamw", lr=1e-3, lr_base=1e-3, lr_base_size=1024, weight_decay=0.05, sched="cosine", warmup_epochs=0.3,
    warmup_lr=1e-5, min_lr=1e-5, clip_grad=5.0, smoothing=0.1, aa=None, reprob=0.0, remode="pixel", mixup=0.0,
    cutmix=0.0, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.5, color_jitter=None, model_ema=False,
    model_ema_decay=0.999, drop_path=0.0, linear_init="torch",
)
RECIPES = {"folder": IMAGENET_RECIPE, "fashion_mnist": FASHION_MNIST_RECIPE}


class UpdateKwargs(argparse.Action):
    """``--model-kwargs key=value ...``: values parsed as Python/YAML literals, merged into earlier ones (a YAML
    config's ``model_kwargs`` stays unless a flag overrides the same key)."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            if "=" not in item:
                raise argparse.ArgumentError(self, f"expected key=value, got {item!r}")
            key, text = item.split("=", 1)
            merged[key.strip().replace("-", "_")] = parse_literal(text)
        setattr(namespace, self.dest, merged)


class TrainingLength(argparse.Action):
    """``--epochs`` and ``--iters`` say the same thing in two units: the one given on the command line replaces
    the other's default (a config's ``iters: 160000`` does not outlive ``--epochs 2``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "iters" if self.dest == "epochs" else "epochs", None)


def parse_literal(text: str) -> Any:
    """'[32, 64]' → list, '0.1' → float, 'true' → True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def _bounded(kind: type, minimum: float, what: str):
    """An argparse type: ``kind`` (int/float) at least ``minimum``; argparse turns the error into
    ``datvit train: error: argument -b/--batch-size: must be ...`` and exit status 2."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = what
    return parse


positive_int = _bounded(int, 1, "a positive integer")
non_negative_int = _bounded(int, 0, "an integer >= 0")
non_negative_float = _bounded(float, 0.0, "a finite number >= 0")


def _floats(n: Optional[int] = None):
    return dict(type=float, nargs=n or "+")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Add every ``datvit train`` argument to ``parser`` (a new one when None)."""
    p = parser or ConfigFileParser(prog="datvit train")
    bool_flag = argparse.BooleanOptionalAction
    p.add_argument("-c", "--config", default=None, metavar="FILE",
                   help="YAML file of argument defaults (keys are the flag names, '-' or '_'); flags override it")

    g = p.add_argument_group("dataset")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="ImageNet-style folder (train/<class>/*, val/<class>/*) or a directory with the Fashion-MNIST "
                        "IDX files; default: the built-in Fashion-MNIST of the Debian package dataset-fashion-mnist")
    g.add_argument("--dataset", default=None,
                   help="'fashion_mnist' or 'folder'; default: guessed from --data-dir (Fashion-MNIST without one)")
    g.add_argument("--train-split", default="train", help="training split (folder name)")
    g.add_argument("--val-split", default="val", help="evaluation split ('val'; Fashion-MNIST: its 10k test set)")
    g.add_argument("--dataset-download", action="store_true",
                   help="download Fashion-MNIST with torchvision into --data-dir if it is missing (needs internet)")
    g.add_argument("--num-classes", type=positive_int, default=None, help="classifier size (default: the dataset's)")
    g.add_argument("--in-chans", type=int, default=None, help="input channels (Fashion-MNIST: 1, folders: 3)")
    g.add_argument("--img-size", type=positive_int, default=None, help="training/evaluation image size")
    g.add_argument("--crop-pct", type=float, default=None, help="evaluation center-crop ratio (0.875)")
    g.add_argument("--mean", **_floats(), default=None, metavar="MEAN", help="normalisation mean per channel")
    g.add_argument("--std", **_floats(), default=None, metavar="STD", help="normalisation std per channel")
    g.add_argument("--interpolation", default=None, help="evaluation resize interpolation (bicubic)")
    g.add_argument("--workers", "-j", type=non_negative_int, default=min(4, max((os.cpu_count() or 1) - 1, 0)),
                   help="DataLoader worker processes per rank")
    g.add_argument("--pin-mem", action="store_true", help="pin CPU memory of batches (GPU training)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="registered variant (dat_tiny, datpp_tiny, ...), a training preset (dat_nano) or a name "
                        "for a custom model given with --model-config/--model-kwargs (default: dat_tiny; "
                        "Fashion-MNIST: dat_nano)")
    g.add_argument("--model-config", default=None, metavar="FILE",
                   help="YAML/JSON of DAT constructor arguments that override --model's (a custom variant)")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=UpdateKwargs, metavar="KEY=VALUE",
                   help="DAT constructor arguments, e.g. dims='[32,64,128,256]' depths='[2,2,2,2]'")
    g.add_argument("--pretrained-path", default=None, metavar="FILE",
                   help="weights to start from (ours or the authors' .pth); a different head is re-initialised")
    g.add_argument("--initial-checkpoint", default=None, metavar="FILE",
                   help="same as --pretrained-path (timm keeps both names)")
    g.add_argument("--linear-init", default=None, choices=("model", "torch"),
                   help="init of the Linear layers: the model's (truncated normal, std 0.02, as timm; the ImageNet "
                        "default) or PyTorch's default (what the authors' code ends up with; trains faster in short "
                        "runs, the Fashion-MNIST default). Weights loaded from a file replace either")
    g.add_argument("--drop", type=float, default=None, help="dropout rate (drop_rate)")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: the variant's)")
    g.add_argument("--channels-last", action=bool_flag, default=False, help="channels-last memory format")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation (resize + crop)")
    g.add_argument("--scale", **_floats(2), default=None, help="random-resized-crop area range")
    g.add_argument("--ratio", **_floats(2), default=None, help="random-resized-crop aspect range")
    g.add_argument("--hflip", type=float, default=None, help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=None, help="colour jitter (off with --aa)")
    g.add_argument("--aa", default=None, help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)")
    g.add_argument("--train-interpolation", default=None, help="training resize interpolation")
    g.add_argument("--reprob", type=float, default=None, help="random erasing probability")
    g.add_argument("--remode", default=None, help="random erasing mode (pixel)")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--mixup", type=float, default=None, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=None, help="CutMix alpha (0: off)")
    g.add_argument("--cutmix-minmax", **_floats(2), default=None, help="CutMix min/max ratio")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of Mixup or CutMix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of CutMix over Mixup")
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="Mixup granularity")
    g.add_argument("--mixup-off-epoch", type=int, default=0, help="stop Mixup/CutMix from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=None, help="label smoothing")

    add_engine_arguments(p)
    return p


def add_engine_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of the training engine itself, shared by ``datvit train`` and ``datvit det|seg train``:
    optimizer and schedule, EMA, precision and devices, output, checkpoints and resume. Values a task's recipe
    fills default to None."""
    bool_flag = argparse.BooleanOptionalAction
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("-b", "--batch-size", type=positive_int, default=None, help="batch size per process")
    g.add_argument("-vb", "--validation-batch-size", type=positive_int, default=None, help="evaluation batch size")
    g.add_argument("--epochs", type=non_negative_int, default=None, action=TrainingLength, help="epochs to train")
    g.add_argument("--iters", type=positive_int, default=None, action=TrainingLength,
                   help="optimizer updates to train instead of --epochs (rounded up to whole epochs; the authors' "
                        "segmentation configs count iterations)")
    g.add_argument("--opt", default=None, help="optimizer (timm name: adamw, sgd, lamb, ...)")
    g.add_argument("--opt-eps", type=float, default=None, help="optimizer epsilon")
    g.add_argument("--opt-betas", **_floats(), default=None, help="optimizer betas")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--opt-fused", action=bool_flag, default=None,
                   help="torch's fused optimizer kernel (AdamW/Adam/SGD/Adagrad; one kernel per step instead of a "
                        "dozen passes over the weights: AdamW's step 4.6x faster on CPU). Default: on wherever "
                        "torch has it for the optimizer and device; --no-opt-fused for the foreach implementation")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (classification: none on norms, biases and position tables; detection/"
                        "segmentation: none on the names the authors exempt)")
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping value (0: off)")
    g.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="gradient clipping mode")
    g.add_argument("--lr", type=non_negative_float, default=None,
                   help="learning rate (default: lr-base × global batch / lr-base-size)")
    g.add_argument("--lr-base", type=float, default=None, help="learning rate at --lr-base-size")
    g.add_argument("--lr-base-size", type=int, default=None, help="global batch size of --lr-base")
    g.add_argument("--lr-base-scale", default="linear", choices=("linear", "sqrt"), help="lr scaling with batch")
    g.add_argument("--sched", default=None, help="schedule (timm: cosine, step, multistep, tanh, poly, none)")
    g.add_argument("--sched-on-updates", action=bool_flag, default=True,
                   help="update the lr every optimizer step (default) rather than every epoch")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up epochs")
    g.add_argument("--warmup-iters", type=int, default=None,
                   help="linear warm-up in optimizer updates (overrides --warmup-epochs; the authors' dense configs)")
    g.add_argument("--warmup-lr", type=float, default=None, help="lr at the start of warm-up")
    g.add_argument("--warmup-ratio", type=float, default=None,
                   help="warm-up starts at lr × this ratio (overrides --warmup-lr; mmcv's warmup_ratio)")
    g.add_argument("--warmup-prefix", action=bool_flag, default=False, help="warm-up not counted in --epochs")
    g.add_argument("--min-lr", type=float, default=None, help="lr floor of the schedule")
    g.add_argument("--cooldown-epochs", type=int, default=0, help="epochs at min-lr after the schedule")
    g.add_argument("--decay-epochs", type=float, default=90, help="step schedule: epochs between decays")
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270], help="multistep milestones")
    g.add_argument("--decay-rate", type=float, default=0.1, help="step/multistep decay factor")

    g = p.add_argument_group("precision and devices")
    g.add_argument("--amp", action=bool_flag, default=False,
                   help="mixed precision: GPU bf16/fp16; CPU bf16 only where the processor has native bf16")
    g.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"), help="autocast dtype")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--deterministic", action=bool_flag, default=False,
                   help="deterministic algorithms (slower on GPU; CPU runs are deterministic already)")
    g.add_argument("--seed", type=int, default=42, help="random seed (data order, augmentation, init)")
    g.add_argument("--max-bad-steps", type=non_negative_int, default=3, metavar="N",
                   help="stop after N consecutive steps with a non-finite loss (their updates are skipped and "
                        "no checkpoint is written after them); 0: never stop, keep skipping them")

    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--output", default="output/train", metavar="DIR", help="parent of the run directories")
    g.add_argument("--experiment", default=None,
                   help="run directory name under --output (default: <date>-<model>-<img-size>)")
    g.add_argument("--checkpoint-hist", type=non_negative_int, default=10, help="checkpoint-<epoch>.pth files to keep")
    g.add_argument("--checkpoint-interval", type=non_negative_int, default=1000,
                   help="also write last.pth every N optimizer steps within an epoch (0: only at epoch ends)")
    g.add_argument("--log-interval", type=positive_int, default=50, help="steps between progress-bar/curve updates")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines still printed)")

    g = p.add_argument_group("weight averaging, memory and resume")
    g.add_argument("--model-ema", action=bool_flag, default=None, help="keep an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=None, help="EMA decay")
    g.add_argument("--model-ema-warmup", action=bool_flag, default=False, help="EMA decay warm-up")
    g.add_argument("--grad-checkpointing", action=bool_flag, default=False,
                   help="recompute block activations in backward to save memory")
    g.add_argument("--sync-bn", action=bool_flag, default=False,
                   help="synchronise BatchNorm statistics over the ranks (CUDA DDP; the authors' segmentation heads)")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue a run exactly from a checkpoint; 'auto' takes last.pth of the experiment "
                        "(--experiment, or the newest run under --output)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="let --resume/--initial-checkpoint files that pickle Python objects besides tensors and "
                        "configs run code while loading (only for files you trust; refused otherwise)")
    g.add_argument("--no-resume-opt", action="store_true",
                   help="with --resume: restore only the weights, not optimizer/scheduler/position")
    return p


def normalise_keys(config: dict[str, Any]) -> dict[str, Any]:
    """YAML keys may use '-' like the flags; argparse dests use '_'."""
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
        raise ValueError(f"{path} must hold a mapping of option: value, not a {type(data).__name__}")
    return data


class ConfigFileParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``-c/--config`` YAML supplies the defaults (flags still win), as in timm.

    Works as a subcommand parser too: argparse hands a subparser its part of the command line through
    ``parse_known_args``, which is where the YAML is read. Unknown YAML keys are an error.
    """

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("-c", "--config", default=None)
        known, _ = pre.parse_known_args(argv)
        if known.config:
            try:
                config = normalise_keys(load_yaml(known.config))
            except (OSError, ValueError, yaml.YAMLError) as e:
                self.error(f"cannot read the config {known.config}: {e}")
            dests = {a.dest for a in self._actions}
            unknown = sorted(set(config) - dests)
            if unknown:
                self.error(f"{known.config}: unknown option(s) {', '.join(unknown)}")
            # a config that gives the training length in one unit replaces the parser's default in the other
            # (the seg parser defaults to iters 160000: a config's `epochs: 2` must not be outlived by it)
            for unit, other in (("epochs", "iters"), ("iters", "epochs")):
                if config.get(unit) is not None and other not in config and other in dests:
                    config[other] = None
            self.set_defaults(**config)
        return super().parse_known_args(argv, namespace)


def apply_recipe(args: argparse.Namespace, dataset_kind: str) -> argparse.Namespace:
    """Fill every unset (None) argument from the dataset's recipe, then derive lr from the global batch."""
    for key, value in RECIPES[dataset_kind].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if isinstance(args.aa, str) and args.aa.lower() in ("", "none"):
        args.aa = None
    args.dataset = dataset_kind
    return args


def scaled_lr(lr_base: float, global_batch: int, lr_base_size: int, scale: str = "linear") -> float:
    """lr_base at lr_base_size, scaled to ``global_batch`` linearly (the papers) or by square root."""
    ratio = global_batch / lr_base_size
    return lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)


def default_experiment_name(args: argparse.Namespace) -> str:
    """timm's run-directory naming: date-time, model, image size."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = getattr(args, "model", None) or getattr(args, "preset", None) or "run"
    size = getattr(args, "img_size", None) or getattr(args, "crop_size", None)
    return f"{stamp}-{name}" + (f"-{size}" if size else "")


def to_plain(value: Any) -> Any:
    """Arguments as YAML/checkpoint-safe values (tuples → lists, paths → str)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved configuration (``args.yaml`` and the checkpoint's ``args``)."""
    return {k: to_plain(v) for k, v in sorted(vars(args).items()) if k != "func"}
