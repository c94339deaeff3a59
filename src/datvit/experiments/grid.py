"""An experiment file: a grid of training runs declared in YAML, checked whole before the first run.

Schema (``docs/experiments.md`` has the long form)::

    name: ablation-stages          # default: the file's stem
    description: ...               # one paragraph, copied into the report
    task: train                    # train (classification) | det | seg: the engine's task of every run
    base: demo_fashion_mnist       # a config (shipped name or path, as `datvit train -c`) or a mapping of settings
    settings: {epochs: 2}          # laid over base for every run
    axes:                          # the grid: the product of every axis' values
      d_stages:                    # a named value is a mapping of settings (reserved keys: task, base,
        "3-4": {}                  #   pretrained_from)
        none: {model_kwargs: {stage_spec: [[L, S], [L, S], [L, S], [L, S]]}}
      lr: [1.0e-3, 3.0e-3]         # a list of scalars: the axis names a setting (or a DAT constructor argument)
    seeds: [0, 1, 2]               # every configuration runs once per seed (or an axis named seed)
    metrics: [eval_top1, eval_top5]  # summary.csv columns of the final epoch; the first is the primary one
    baseline: {d_stages: "3-4"}    # differences are paired by seed against this configuration
    scenes: {n_train: 400, n_val: 100}  # det/seg: Fashion-MNIST scenes generated once into <dir>/scenes
    quick: {settings: {...}, scenes: {...}}  # what --quick changes besides running one seed

A run's settings are layers, later ones winning: base < settings < each axis value < quick < the command line's
``--set`` < what the runner sets (seed, run directory, data, resume). An axis value may start from another
experiment's checkpoints: ``pretrained_from: {experiment: backbones, checkpoint: best.pth}`` points the run's
``backbone_weights`` (det/seg) or ``initial_checkpoint`` (train) at the finished run of that experiment (a sibling
directory) whose values agree on the axes both experiments have, with the same seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..train.config import ConfigError, normalise_keys

TASKS = ("train", "det", "seg")
TOP_LEVEL = (
    "name",
    "description",
    "task",
    "base",
    "settings",
    "axes",
    "seeds",
    "metrics",
    "baseline",
    "scenes",
    "quick",
)
RESERVED = ("task", "base", "pretrained_from")
QUICK_KEYS = ("settings", "scenes")
SCENE_KEYS = ("n_train", "n_val", "seed", "canvas", "items", "scale")
DEFAULT_METRICS = {"train": ["eval_top1"], "det": ["eval_bbox_mAP"], "seg": ["eval_mIoU"]}


class ExperimentError(ConfigError):
    """An experiment file that cannot run: one line naming the file, the axis or run, and what is wrong."""


def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


@dataclasses.dataclass(frozen=True)
class AxisValue:
    """One value of an axis: its label in run names and tables, and the settings it sets."""

    label: str
    settings: dict[str, Any]
    task: Optional[str] = None
    base: Any = None
    pretrained_from: Optional[dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the grid: ``{axis: AxisValue}`` in axis order."""

    values: tuple[tuple[str, AxisValue], ...]

    @property
    def labels(self) -> dict[str, str]:
        return {axis: value.label for axis, value in self.values}

    @property
    def name(self) -> str:
        return ",".join(f"{a}={v}" for a, v in self.labels.items()) or "default"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a configuration and a seed, with its directory name under ``<experiment>/runs``."""

    index: int
    configuration: Configuration
    seed: int

    @property
    def name(self) -> str:
        parts = [f"{a}={_safe(v)}" for a, v in self.configuration.labels.items()]
        return "__".join(parts + [f"seed={self.seed}"])


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in label)


@dataclasses.dataclass
class Experiment:
    """A parsed experiment file (see the module docstring)."""

    name: str
    source: str
    task: str
    base: Any
    settings: dict[str, Any]
    axes: dict[str, list[AxisValue]]
    seeds: list[int]
    metrics: list[str]
    baseline: Optional[dict[str, str]]
    scenes: Optional[dict[str, Any]]
    description: str = ""
    quick_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    quick_scenes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def configurations(self) -> list[Configuration]:
        names = list(self.axes)
        combos = itertools.product(*(self.axes[a] for a in names)) if names else [()]
        return [Configuration(tuple(zip(names, combo))) for combo in combos]

    def runs(self, seeds: Optional[list[int]] = None) -> list[Run]:
        """Every run, configuration-major (all seeds of the first configuration first)."""
        seeds = self.seeds if seeds is None else seeds
        out = []
        for configuration in self.configurations():
            for seed in seeds:
                out.append(Run(len(out), configuration, seed))
        return out

    def baseline_for(self, configuration: Configuration) -> Optional[Configuration]:
        """The configuration ``configuration`` is compared with: the baseline's values on the axes the baseline
        names, ``configuration``'s own on the others (a baseline per head, say); None without a baseline."""
        if not self.baseline:
            return None
        want = {**configuration.labels, **self.baseline}
        return next((c for c in self.configurations() if c.labels == want), None)

    def baseline_configuration(self) -> Optional[Configuration]:
        """The baseline when it names every axis (else the first configuration that is a baseline)."""
        if not self.baseline:
            return None
        return next((c for c in self.configurations() if self.baseline_for(c) == c), None)


def experiments_dir() -> Path:
    """Where the shipped experiment files are (package data)."""
    from importlib import resources

    return Path(str(resources.files("datvit.configs").joinpath("experiments")))


def shipped_experiments() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def experiment_path(name_or_path: str | os.PathLike) -> Path:
    """A file that exists, else a shipped experiment of that name; else an :class:`ExperimentError`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if os.sep not in str(name_or_path) and stem in shipped_experiments():
        return experiments_dir() / f"{stem}.yaml"
    raise ExperimentError(
        f"{name_or_path}: no such experiment file or shipped experiment{_hint(stem, shipped_experiments())}; "
        f"shipped: {', '.join(shipped_experiments())}"
    )


def _axis_values(axis: str, raw: Any, where: str) -> list[AxisValue]:
    if isinstance(raw, Mapping):
        values = []
        for label, settings in raw.items():
            settings = dict(settings or {})
            if not isinstance(settings, dict):
                raise ExperimentError(f"{where}: axis {axis} value {label}: expected a mapping of settings")
            settings = normalise_keys(settings)
            reserved = {k: settings.pop(k) for k in RESERVED if k in settings}
            task = reserved.get("task")
            if task is not None and task not in TASKS:
                raise ExperimentError(f"{where}: axis {axis} value {label}: task {task!r} is not one of {TASKS}")
            pretrained = reserved.get("pretrained_from")
            if pretrained is not None and (not isinstance(pretrained, Mapping) or "experiment" not in pretrained):
                raise ExperimentError(
                    f"{where}: axis {axis} value {label}: pretrained_from needs {{experiment: NAME[, checkpoint: "
                    "best.pth]}"
                )
            values.append(
                AxisValue(
                    str(label),
                    settings,
                    task=task,
                    base=reserved.get("base"),
                    pretrained_from=dict(pretrained) if pretrained else None,
                )
            )
    elif isinstance(raw, list) and raw:
        values = [AxisValue(_label(v), {axis: v}) for v in raw]
    else:
        raise ExperimentError(
            f"{where}: axis {axis} must be a non-empty list of values or a mapping of named values to settings"
        )
    labels = [v.label for v in values]
    if len(set(map(_safe, labels))) != len(labels):
        raise ExperimentError(f"{where}: axis {axis} has values with the same name: {labels}")
    return values


def _label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_label(v) for v in value)
    return str(value)


def parse_experiment(data: Mapping[str, Any], source: str) -> Experiment:
    """An :class:`Experiment` from the YAML mapping of ``source`` (checks the file's own structure; the settings
    are checked against the task's config by :func:`datvit.experiments.runner.plan`)."""
    if not isinstance(data, Mapping):
        raise ExperimentError(f"{source}: an experiment file holds a mapping, not a {type(data).__name__}")
    data = normalise_keys(data)
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        raise ExperimentError(
            f"{source}: unknown key {unknown[0]}{_hint(unknown[0], TOP_LEVEL)}; keys: {', '.join(TOP_LEVEL)}"
        )
    task = data.get("task", "train")
    if task not in TASKS:
        raise ExperimentError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}")
    axes_raw = dict(data.get("axes") or {})
    seeds = data.get("seeds")
    if "seed" in axes_raw:
        if seeds is not None:
            raise ExperimentError(f"{source}: give the seeds once, as `seeds:` or as an axis named seed")
        seeds = axes_raw.pop("seed")
    seeds = [0] if seeds is None else seeds
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ExperimentError(f"{source}: seeds must be a list of integers (or a count), got {seeds!r}")
    axes = {str(axis): _axis_values(str(axis), raw, source) for axis, raw in axes_raw.items()}
    metrics = data.get("metrics") or DEFAULT_METRICS[task]
    if isinstance(metrics, str):
        metrics = [metrics]
    baseline = data.get("baseline")
    if baseline is not None:
        baseline = {str(k): _label(v) for k, v in dict(baseline).items()}
        for axis, label in baseline.items():
            if axis not in axes:
                raise ExperimentError(f"{source}: baseline names axis {axis}, which is not an axis{_hint(axis, axes)}")
            labels = [v.label for v in axes[axis]]
            if label not in labels:
                raise ExperimentError(
                    f"{source}: baseline {axis}={label} is not a value of the axis{_hint(label, labels)}"
                )
    scenes = data.get("scenes")
    quick = dict(data.get("quick") or {})
    for key in quick:
        if key not in QUICK_KEYS:
            raise ExperimentError(f"{source}: unknown quick key {key}{_hint(key, QUICK_KEYS)}")
    for what, value in (("scenes", scenes or {}), ("quick.scenes", quick.get("scenes") or {})):
        for key in value:
            if key not in SCENE_KEYS:
                raise ExperimentError(f"{source}: unknown {what} key {key}{_hint(key, SCENE_KEYS)}")
    return Experiment(
        name=str(data.get("name") or Path(source).stem),
        source=source,
        task=task,
        base=data.get("base"),
        settings=normalise_keys(data.get("settings") or {}),
        axes=axes,
        seeds=list(seeds),
        metrics=[str(m) for m in metrics],
        baseline=baseline,
        scenes=dict(scenes) if scenes is not None else None,
        description=str(data.get("description") or "").strip(),
        quick_settings=normalise_keys(quick.get("settings") or {}),
        quick_scenes=dict(quick.get("scenes") or {}),
    )


def load_experiment(name_or_path: str | os.PathLike) -> Experiment:
    """Read and parse an experiment file (a path, or the name of a shipped one: ``ablation-stages``)."""
    path = experiment_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_experiment(data or {}, str(path))
