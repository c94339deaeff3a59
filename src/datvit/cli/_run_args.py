"""The command line of a training run: flags and a YAML file become layers of settings for
:func:`datvit.train.resolve.resolve_run_config`, which alone decides the run's values.

Every parser built here has ``argparse.SUPPRESS`` as its default, so the parsed namespace holds exactly the flags
that were given: "not given" and "given as the default" stay distinct, and the defaults live in one place, the
config dataclasses (:mod:`datvit.train.config`) and the tasks' recipes.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Mapping

import yaml

from ..train.config import ConfigError, config_defaults, load_yaml, normalise_keys, parse_literal

# namespace entries that belong to the command line, not to the run
CLI_KEYS = frozenset({"func", "command", "action", "debug", "config"})


class UpdateKwargs(argparse.Action):
    """``--model-kwargs key=value ...``: values parsed as Python/YAML literals, merged key by key into the
    YAML file's (a flag overrides only the keys it names)."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            if "=" not in item:
                raise argparse.ArgumentError(self, f"expected key=value, got {item!r}")
            key, text = item.split("=", 1)
            merged[key.strip().replace("-", "_")] = parse_literal(text)
        setattr(namespace, self.dest, merged)


class TrainingLength(argparse.Action):
    """``--epochs`` and ``--iters`` say the same thing in two units: the one given last wins, and it replaces
    the other unit of the YAML file and the recipe."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "iters" if self.dest == "epochs" else "epochs", None)


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


def config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """A command's frozen config (a dataclass) from the parsed flags that name its fields, plus ``values``;
    ``--no-progress`` becomes ``progress``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "progress" in names and "progress" not in values and hasattr(args, "no_progress"):
        values["progress"] = not args.no_progress
    return cls(**{**given, **values})


def run_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser whose flags default to ``argparse.SUPPRESS`` (only given flags are parsed)."""
    return subparsers.add_parser(name, argument_default=argparse.SUPPRESS, **kwargs)


def add_trust_checkpoint_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "a checkpoint"
) -> None:
    """``--trust-checkpoint``: the one switch that lets a pickled file run code while it loads."""
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=f"allow {what} that pickles Python objects besides tensors and configs to run code while "
        "loading (only for files you trust; refused otherwise)",
    )


def add_workers_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, default: Any = argparse.SUPPRESS
) -> None:
    p.add_argument(
        "--workers", "-j", type=non_negative_int, default=default, help="DataLoader worker processes per rank"
    )


def add_evaluation_output_arguments(p: argparse.ArgumentParser) -> None:
    """What every evaluation command shares: where it runs, where the JSON of its results goes, progress bars."""
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument(
        "--output",
        "--results-file",
        dest="output",
        default=None,
        metavar="FILE",
        help="also write the results as JSON (--results-file: timm's name)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_config_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help=help)


def show_defaults(parser: argparse.ArgumentParser, config_cls: type, recipe: Mapping[str, Any] | None = None) -> None:
    """Append ``(default: X)`` to the help of every flag whose field has a default in ``config_cls`` (or in
    ``recipe``, which wins) and whose help does not already say it."""

    defaults = config_defaults(config_cls)
    defaults.update(recipe or {})
    for action in parser._actions:
        value = defaults.get(action.dest)
        if (
            not action.option_strings
            or action.help in (None, argparse.SUPPRESS)
            or value in (None, False, {}, [])
            or "default" in action.help
        ):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        action.help = f"{action.help} (default: {shown})"


def settings_layers(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    config_cls: type,
    defaults: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The layers of a run's settings: ``defaults`` (a command's own, e.g. the demo's output), the ``-c`` YAML
    file, then the flags given. An unreadable file or a key that is no field of ``config_cls`` is a usage error
    of ``parser`` (exit status 2)."""
    from ..train.config import check_keys

    layers: list[tuple[str, dict[str, Any]]] = []
    if defaults:
        layers.append(("defaults", dict(defaults)))
    path = getattr(args, "config", None)
    if path:
        try:
            data = load_yaml(path)
            check_keys(config_cls, data, str(path))
        except ConfigError as e:
            parser.error(str(e))
        except (OSError, yaml.YAMLError) as e:
            parser.error(f"cannot read the config {path}: {e}")
        layers.append((str(path), data))
    flags = {k: v for k, v in vars(args).items() if k not in CLI_KEYS}
    layers.append(("command line", normalise_keys(flags)))
    return layers


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every ``datvit train`` flag (the fields of :class:`datvit.train.config.TrainConfig`) on ``p``; a flag that is
    not given leaves no attribute (the parser's default is ``argparse.SUPPRESS``)."""
    bool_flag = argparse.BooleanOptionalAction
    add_config_argument(p, "YAML file of settings (keys are the flag names, '-' or '_'); flags override it")

    g = p.add_argument_group("dataset")
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="ImageNet-style folder (train/<class>/*, val/<class>/*) or a directory with the Fashion-MNIST "
        "IDX files; default: the built-in Fashion-MNIST of the Debian package dataset-fashion-mnist",
    )
    g.add_argument(
        "--dataset", help="'fashion_mnist' or 'folder'; default: guessed from --data-dir (Fashion-MNIST without one)"
    )
    g.add_argument("--train-split", help="training split (folder name)")
    g.add_argument("--val-split", help="evaluation split ('val'; Fashion-MNIST: its 10k test set)")
    g.add_argument(
        "--dataset-download",
        action="store_true",
        help="download Fashion-MNIST with torchvision into --data-dir if it is missing (needs internet)",
    )
    g.add_argument(
        "--train-subset",
        type=positive_int,
        metavar="N",
        help="train on the first N images of the training split only (smoke tests, quick looks)",
    )
    g.add_argument(
        "--eval-subset", type=positive_int, metavar="N", help="evaluate on the first N images of the split only"
    )
    g.add_argument("--num-classes", type=positive_int, help="classifier size (default: the dataset's)")
    g.add_argument("--in-chans", type=int, help="input channels (Fashion-MNIST: 1, folders: 3)")
    g.add_argument("--img-size", type=positive_int, help="training/evaluation image size")
    g.add_argument("--crop-pct", type=float, help="evaluation center-crop ratio (0.875)")
    g.add_argument("--mean", nargs="+", type=float, metavar="MEAN", help="normalisation mean per channel")
    g.add_argument("--std", nargs="+", type=float, metavar="STD", help="normalisation std per channel")
    g.add_argument("--interpolation", help="evaluation resize interpolation (bicubic)")
    add_workers_argument(g)
    g.add_argument("--pin-mem", action="store_true", help="pin CPU memory of batches (GPU training)")

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="registered variant (dat_tiny, datpp_tiny, ...), a training preset (dat_nano) or a name "
        "for a custom model given with --model-config/--model-kwargs (default: dat_tiny; "
        "Fashion-MNIST: dat_nano)",
    )
    g.add_argument(
        "--model-config",
        metavar="FILE",
        help="YAML/JSON of DAT constructor arguments that override --model's (a custom variant)",
    )
    g.add_argument(
        "--model-kwargs",
        nargs="*",
        action=UpdateKwargs,
        metavar="KEY=VALUE",
        help="DAT constructor arguments, e.g. dims='[32,64,128,256]' depths='[2,2,2,2]'",
    )
    g.add_argument(
        "--pretrained-path",
        metavar="FILE",
        help="weights to start from (ours or the authors' .pth); a different head is re-initialised",
    )
    g.add_argument("--initial-checkpoint", metavar="FILE", help="same as --pretrained-path (timm keeps both names)")
    g.add_argument(
        "--linear-init",
        choices=("model", "torch"),
        help="init of the Linear layers: the model's (truncated normal, std 0.02, as timm; the ImageNet "
        "default) or PyTorch's default (what the authors' code ends up with; trains faster in short "
        "runs, the Fashion-MNIST default). Weights loaded from a file replace either",
    )
    g.add_argument("--drop", type=float, help="dropout rate (drop_rate)")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (default: the variant's)")
    g.add_argument("--channels-last", action=bool_flag, help="channels-last memory format")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation (resize + crop)")
    g.add_argument("--scale", nargs=2, type=float, help="random-resized-crop area range")
    g.add_argument("--ratio", nargs=2, type=float, help="random-resized-crop aspect range")
    g.add_argument("--hflip", type=float, help="horizontal flip probability")
    g.add_argument("--vflip", type=float, help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, help="colour jitter (off with --aa)")
    g.add_argument("--aa", help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)")
    g.add_argument("--train-interpolation", help="training resize interpolation")
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g.add_argument("--remode", help="random erasing mode (pixel)")
    g.add_argument("--recount", type=int, help="random erasing count")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    g.add_argument("--cutmix-minmax", nargs=2, type=float, help="CutMix min/max ratio")
    g.add_argument("--mixup-prob", type=float, help="probability of Mixup or CutMix per batch")
    g.add_argument("--mixup-switch-prob", type=float, help="probability of CutMix over Mixup")
    g.add_argument("--mixup-mode", choices=("batch", "pair", "elem"), help="Mixup granularity")
    g.add_argument("--mixup-off-epoch", type=int, help="stop Mixup/CutMix from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, help="label smoothing")

    add_engine_arguments(p)
    return p


def add_engine_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the training engine itself (:class:`datvit.train.config.EngineConfig`), shared by
    ``datvit train`` and ``datvit det|seg train``: optimizer and schedule, EMA, precision and devices, output,
    checkpoints and resume."""
    bool_flag = argparse.BooleanOptionalAction
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("-b", "--batch-size", type=positive_int, help="batch size per process")
    g.add_argument("-vb", "--validation-batch-size", type=positive_int, help="evaluation batch size")
    g.add_argument("--epochs", type=non_negative_int, action=TrainingLength, help="epochs to train")
    g.add_argument(
        "--iters",
        type=positive_int,
        action=TrainingLength,
        help="optimizer updates to train instead of --epochs (rounded up to whole epochs; the authors' "
        "segmentation configs count iterations)",
    )
    g.add_argument("--opt", help="optimizer (timm name: adamw, sgd, lamb, ...)")
    g.add_argument("--opt-eps", type=float, help="optimizer epsilon")
    g.add_argument("--opt-betas", nargs="+", type=float, help="optimizer betas")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument(
        "--opt-fused",
        action=bool_flag,
        help="torch's fused optimizer kernel (AdamW/Adam/SGD/Adagrad; one kernel per step instead of a "
        "dozen passes over the weights: AdamW's step 4.6x faster on CPU). Default: on wherever "
        "torch has it for the optimizer and device; --no-opt-fused for the foreach implementation",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        help="weight decay (classification: none on norms, biases and position tables; detection/"
        "segmentation: none on the names the authors exempt)",
    )
    g.add_argument("--clip-grad", type=float, help="gradient clipping value (0: off)")
    g.add_argument("--clip-mode", choices=("norm", "value", "agc"), help="gradient clipping mode")
    g.add_argument(
        "--lr", type=non_negative_float, help="learning rate (default: lr-base × global batch / lr-base-size)"
    )
    g.add_argument("--lr-base", type=float, help="learning rate at --lr-base-size")
    g.add_argument("--lr-base-size", type=int, help="global batch size of --lr-base")
    g.add_argument("--lr-base-scale", choices=("linear", "sqrt"), help="lr scaling with batch")
    g.add_argument("--sched", help="schedule (timm: cosine, step, multistep, tanh, poly, none)")
    g.add_argument(
        "--sched-on-updates",
        action=bool_flag,
        help="update the lr every optimizer step (default) rather than every epoch",
    )
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up epochs")
    g.add_argument(
        "--warmup-iters",
        type=int,
        help="linear warm-up in optimizer updates (overrides --warmup-epochs; the authors' dense configs)",
    )
    g.add_argument("--warmup-lr", type=float, help="lr at the start of warm-up")
    g.add_argument(
        "--warmup-ratio",
        type=float,
        help="warm-up starts at lr × this ratio (overrides --warmup-lr; mmcv's warmup_ratio)",
    )
    g.add_argument("--warmup-prefix", action=bool_flag, help="warm-up not counted in --epochs")
    g.add_argument("--min-lr", type=float, help="lr floor of the schedule")
    g.add_argument("--cooldown-epochs", type=int, help="epochs at min-lr after the schedule")
    g.add_argument("--decay-epochs", type=float, help="step schedule: epochs between decays")
    g.add_argument("--decay-milestones", type=int, nargs="+", help="multistep milestones")
    g.add_argument("--decay-rate", type=float, help="step/multistep decay factor")

    g = p.add_argument_group("precision and devices")
    g.add_argument(
        "--amp",
        action=bool_flag,
        help="mixed precision: GPU bf16/fp16; CPU bf16 only where the processor has native bf16",
    )
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), help="autocast dtype")
    g.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument(
        "--deterministic",
        action=bool_flag,
        help="deterministic algorithms (slower on GPU; CPU runs are deterministic already)",
    )
    g.add_argument("--seed", type=int, help="random seed (data order, augmentation, init)")
    g.add_argument(
        "--max-bad-steps",
        type=non_negative_int,
        metavar="N",
        help="stop after N consecutive steps with a non-finite loss (their updates are skipped and "
        "no checkpoint is written after them); 0: never stop, keep skipping them",
    )

    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--output", metavar="DIR", help="parent of the run directories")
    g.add_argument("--experiment", help="run directory name under --output (default: <date>-<model>-<img-size>)")
    g.add_argument("--checkpoint-hist", type=non_negative_int, help="checkpoint-<epoch>.pth files to keep")
    g.add_argument(
        "--checkpoint-interval",
        type=non_negative_int,
        help="also write last.pth every N optimizer steps within an epoch (0: only at epoch ends)",
    )
    g.add_argument("--log-interval", type=positive_int, help="steps between progress-bar/curve updates")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines still printed)")
    g.add_argument(
        "--tensorboard",
        action=bool_flag,
        help="TensorBoard event files in the run directory, beside summary.csv (default: when the tensorboard "
        "package is installed, pip install 'datvit[log]')",
    )
    g.add_argument(
        "--wandb",
        action=bool_flag,
        help="also log to Weights & Biases (needs wandb; WANDB_MODE=offline writes the run locally, WANDB_DIR "
        "says where)",
    )
    g.add_argument("--wandb-project", metavar="NAME", help="W&B project (default: datvit)")

    g = p.add_argument_group("weight averaging, memory and resume")
    g.add_argument("--model-ema", action=bool_flag, help="keep an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, help="EMA decay")
    g.add_argument("--model-ema-warmup", action=bool_flag, help="EMA decay warm-up")
    g.add_argument(
        "--grad-checkpointing", action=bool_flag, help="recompute block activations in backward to save memory"
    )
    g.add_argument(
        "--sync-bn",
        action=bool_flag,
        help="synchronise BatchNorm statistics over the ranks (CUDA DDP; the authors' segmentation heads)",
    )
    g.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue a run exactly from a checkpoint; 'auto' takes last.pth of the experiment "
        "(--experiment, or the newest run under --output)",
    )
    add_trust_checkpoint_argument(g, "a --resume/--initial-checkpoint file")
    g.add_argument(
        "--no-resume-opt",
        action="store_true",
        help="with --resume: restore only the weights, not optimizer/scheduler/position",
    )
    return p
