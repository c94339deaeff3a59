"""Resolve a run's settings into its frozen config, once, before the model, loaders or optimizer are built.

:func:`resolve_run_config` is the one place where a run's values are decided: the layers of settings are merged
over the task's recipe, the task fills what depends on its data and model (it opens the datasets here, which
is how it knows the class count), then the learning rate, the schedule in epochs and the run directory are
derived. What it returns is what the run uses, and what ``args.yaml`` and the checkpoints record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..data.loader import EpochSampler
from . import distributed as dist_utils
from .checkpointing import find_auto_resume
from .config import (
    EngineConfig,
    build_config,
    config_defaults,
    config_to_dict,
    default_experiment_name,
    merge_settings,
    resolve_learning_rate,
)
from .errors import TrainingError
from .task import Task


def resolve_run_config(
    task: Task, layers: Iterable[tuple[str, Mapping[str, Any]]], info: dist_utils.DistInfo
) -> EngineConfig:
    """The frozen config of a run of ``task`` from ``layers`` of settings ``(where, mapping)``, later layers
    winning (e.g. ``[("config.yaml", yaml), ("command line", flags)]``). The task is left holding the config and
    its datasets."""
    cls = task.run_config_cls
    given = merge_settings(cls, layers)
    values = merge_settings(
        cls, [("defaults", config_defaults(cls)), ("recipe", task.recipe(given)), ("settings", given)]
    )
    values = task.resolve(values)
    if values.get("batch_size") is None:
        raise TrainingError("give --batch-size")
    values = resolve_learning_rate(values, info.world_size)
    values.update(resolve_schedule(values, len(task.train_set), info.world_size))
    values.update(resolve_run_dir(values, info, task.log, task.warn))
    config = build_config(cls, values)
    task.config = config
    return config


def as_layers(
    settings: EngineConfig | Mapping[str, Any] | Iterable[tuple[str, Mapping[str, Any]]],
) -> list[tuple[str, Mapping[str, Any]]]:
    """Settings in any of the forms the engine takes — a config, one mapping, or layers ``[(where, mapping)]``
    — as layers."""
    if isinstance(settings, EngineConfig):
        return [("settings", config_to_dict(settings))]
    if isinstance(settings, Mapping):
        return [("settings", settings)]
    return list(settings)


def updates_per_epoch(train_samples: int, batch_size: int, world_size: int) -> int:
    """Optimizer updates in one epoch: each rank's share of the (padded) epoch in whole batches."""
    return EpochSampler(train_samples, world_size, 0).epoch_length // batch_size


def resolve_schedule(values: Mapping[str, Any], train_samples: int, world_size: int) -> dict[str, Any]:
    """Schedules given in optimizer updates, as the authors' dense configs give them (``iters``,
    ``warmup_iters``), in the epochs the loop counts: ``iters`` rounds up to whole epochs (the schedule then
    spans those epochs)."""
    batch_size = values["batch_size"]
    per_epoch = updates_per_epoch(train_samples, batch_size, world_size)
    if per_epoch == 0:
        raise TrainingError(
            f"{train_samples} training images are fewer than one batch of {batch_size} × "
            f"{world_size} processes; lower --batch-size"
        )
    out: dict[str, Any] = {}
    if values.get("iters"):
        out["epochs"] = max(1, -(-int(values["iters"]) // per_epoch))
    elif values.get("epochs") is None:
        raise TrainingError("give --epochs or --iters")
    if values.get("warmup_iters") is not None:
        out["warmup_epochs"] = values["warmup_iters"] / per_epoch
        sched = values.get("sched")
        if sched and sched != "none" and not values.get("sched_on_updates", True):
            raise TrainingError("--warmup-iters needs --sched-on-updates (the lr changes every step)")
    return out


def resolve_run_dir(values: Mapping[str, Any], info: dist_utils.DistInfo, log: Any, warn: Any) -> dict[str, Any]:
    """``experiment`` (the run directory's name under ``output``) and ``resume`` (the checkpoint to continue,
    ``auto`` resolved to a path, or None). A new run never writes into a directory that holds one: it gets a
    ``-1``, ``-2`` ... suffix. Rank 0 decides; every rank gets its answer."""
    output, experiment, resume = values.get("output") or "output/train", values.get("experiment"), values.get("resume")
    resume_path = None
    if resume == "auto":
        found = find_auto_resume(output, experiment)
        if found is None:
            log(
                f"--resume auto: nothing to resume under {output}{'/' + experiment if experiment else ''}; "
                "starting a new run"
            )
        else:
            resume_path = str(found)
    elif resume:
        if not os.path.isfile(resume):
            raise TrainingError(f"--resume {resume}: no such checkpoint")
        resume_path = resume
    if resume_path and not experiment:
        run_dir = Path(resume_path).parent
    else:
        name = experiment or default_experiment_name(values)
        run_dir = Path(output) / name
        if not resume_path and (run_dir / "last.pth").exists():
            i = 1
            while (Path(output) / f"{name}-{i}" / "last.pth").exists():
                i += 1
            run_dir = Path(output) / f"{name}-{i}"
            warn(
                f"{Path(output) / name} already holds a run (use --resume auto to continue it); writing this one "
                f"to {run_dir}"
            )
    run_dir, resume_path = dist_utils.broadcast_object((str(run_dir), resume_path), info)
    return {"output": str(Path(run_dir).parent), "experiment": Path(run_dir).name, "resume": resume_path}
