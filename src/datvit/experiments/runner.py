"""Run an experiment's grid through the one training engine: plan and check every run before the first one starts,
then run them one after another (or N at a time, each in its own process), resumably.

Layout of an experiment directory (``<output>/<name>``, ``<name>-quick`` for ``--quick``)::

    experiment.yaml            the experiment file as it was run (what `datvit experiment report` reads)
    scenes/                    det/seg: the generated Fashion-MNIST scenes, shared by every run
    runs/<axis=value__...__seed=S>/   one engine run directory each: last.pth, best.pth, summary.csv, events, ...
        experiment_run.yaml    the run's task and layers of settings (what a --parallel worker process reads)
        result.json            written when the run finished: the marker that it is not run again
    runs.csv, report.md, report.png, summary.json   the report (datvit.experiments.report)

A run killed mid-way has a ``last.pth`` and no ``result.json``: the next ``datvit experiment run`` continues it with
the engine's exact resume (``resume: auto``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from ..train.config import ConfigError, config_fields, load_yaml, merge_settings, normalise_keys
from ..utils.files import atomic_write_text
from .grid import Configuration, Experiment, ExperimentError, Run

RESULT = "result.json"
RUN_SPEC = "experiment_run.yaml"


def experiment_dir(output: str | os.PathLike, name: str, quick: bool = False) -> Path:
    return Path(output) / (f"{name}-quick" if quick else name)


def task_for(kind: str):
    """A fresh engine task for ``kind`` (train, det, seg)."""
    if kind == "train":
        from ..train.classification import ClassificationTask

        return ClassificationTask()
    from ..dense.tasks import DetectionTask, SegmentationTask

    return DetectionTask() if kind == "det" else SegmentationTask()


def config_class(kind: str) -> type:
    if kind == "train":
        from ..train.config import TrainConfig

        return TrainConfig
    from ..dense.run_config import DetectionTrainConfig, SegmentationTrainConfig

    return DetectionTrainConfig if kind == "det" else SegmentationTrainConfig


@dataclasses.dataclass
class PlannedRun:
    """A run with everything it needs: its task, its layers of settings, its directory, its model's size."""

    run: Run
    total: int
    task: str
    layers: list[tuple[str, dict[str, Any]]]
    run_dir: Path
    metrics: list[str]
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # parameters, gflops (per configuration)

    @property
    def finished(self) -> bool:
        return (self.run_dir / RESULT).is_file()

    @property
    def label(self) -> str:
        return f"[{self.run.index + 1}/{self.total}] {self.run.configuration.name} seed={self.run.seed}"


# -- settings ----------------------------------------------------------------------------------------------------


def _axis_settings(axis: str, settings: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """An axis value's settings; a scalar axis that names a DAT constructor argument (``stage_spec``) goes into
    ``model_kwargs``. Unknown names fail with the closest known one."""
    from ..models.factory import model_arguments

    fields = config_fields(cls)
    out: dict[str, Any] = {}
    for key, value in normalise_keys(settings).items():
        if key in fields:
            out[key] = value
        elif key in model_arguments():
            out.setdefault("model_kwargs", {})[key] = value
        else:
            import difflib

            close = difflib.get_close_matches(key, list(fields) + model_arguments(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ExperimentError(f"{where}: unknown setting {key}{hint}")
    return out


def _base_layer(base: Any, where: str) -> tuple[str, dict[str, Any]]:
    if base is None:
        return ("base", {})
    if isinstance(base, Mapping):
        return ("base", normalise_keys(base))
    try:
        return (str(base), load_yaml(base))
    except (OSError, yaml.YAMLError) as e:
        raise ExperimentError(f"{where}: cannot read the base config {base}: {e}") from None


def _pretrained_checkpoint(
    value: Any, configuration: Configuration, seed: int, exp_dir: Path, quick: bool, where: str
) -> str:
    """The checkpoint of the finished run of another experiment that this run starts from (module docstring)."""
    spec = value.pretrained_from
    source = experiment_dir(exp_dir.parent, str(spec["experiment"]), quick)
    checkpoint = str(spec.get("checkpoint", "best.pth"))
    want = {a: v for a, v in configuration.labels.items()}
    candidates = []
    for result_file in sorted((source / "runs").glob(f"*/{RESULT}")):
        result = json.loads(result_file.read_text())
        labels = result.get("configuration", {})
        shared = set(labels) & set(want)
        if result.get("seed") == seed and shared and all(labels[a] == want[a] for a in shared):
            candidates.append(result_file.parent / checkpoint)
    if len(candidates) != 1 or not candidates[0].is_file():
        shared_text = ", ".join(f"{a}={v}" for a, v in want.items())
        found = "several runs match" if len(candidates) > 1 else "no finished run"
        raise ExperimentError(
            f"{where}: pretrained_from {spec['experiment']}: {found} with the values of {shared_text} that it "
            f"shares and seed={seed} in {source} (run `datvit experiment run {spec['experiment']}"
            f"{' --quick' if quick else ''}` first, with the same --output)"
        )
    return str(candidates[0])


def _prepare_scenes(
    experiment: Experiment, exp_dir: Path, quick: bool, data_dir: Optional[str], log: Callable[[str], None]
) -> Path:
    """Generate the experiment's scenes once (skipped when ``scenes.json`` already records the same request)."""
    from ..dense import make_fashion_scenes

    params = {"n_train": 400, "n_val": 100, "seed": 0, "canvas": 128, **(experiment.scenes or {})}
    if quick:
        params.update(experiment.quick_scenes)
    out = exp_dir / "scenes"
    marker = out / "experiment_scenes.json"
    request = json.dumps(params, sort_keys=True)
    if marker.is_file() and marker.read_text() == request:
        return out
    start = time.perf_counter()
    kwargs = {k: params[k] for k in ("items", "scale") if k in params}
    make_fashion_scenes(
        out,
        int(params["n_train"]),
        int(params["n_val"]),
        canvas=int(params["canvas"]),
        seed=int(params["seed"]),
        fashion_mnist_dir=data_dir,
        overwrite=True,
        **kwargs,
    )
    atomic_write_text(request, marker)
    log(
        f"scenes: {params['n_train']} training / {params['n_val']} validation canvases of {params['canvas']} px in "
        f"{out} ({time.perf_counter() - start:.1f} s)"
    )
    return out


def plan(
    experiment: Experiment,
    output: str | os.PathLike = "output/experiments",
    quick: bool = False,
    seeds: Optional[list[int]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    data_dir: Optional[str] = None,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> list[PlannedRun]:
    """Every run of ``experiment`` with its settings, checked before anything trains: unknown axes or settings, a
    value the model rejects (each configuration's model is built once, on the CPU), a dataset that is missing
    or too small, another experiment's checkpoints that are not there. Problems raise :class:`ExperimentError`
    (one line). ``quick``: one seed and the file's ``quick`` settings, in ``<name>-quick``."""
    exp_dir = experiment_dir(output, experiment.name, quick)
    seeds = list(seeds) if seeds else list(experiment.seeds)
    if quick:
        seeds = seeds[:1]
    runs = experiment.runs(seeds)
    overrides = normalise_keys(overrides or {})
    tasks = {v.task or experiment.task for vals in experiment.axes.values() for v in vals} | {experiment.task}
    scenes_dir = None
    if experiment.scenes is not None and tasks & {"det", "seg"}:
        try:
            scenes_dir = _prepare_scenes(experiment, exp_dir, quick, data_dir, log)
        except (FileNotFoundError, ValueError) as e:
            raise ExperimentError(f"{experiment.source}: cannot generate the scenes: {' '.join(str(e).split())}")
    planned: list[PlannedRun] = []
    model_info: dict[str, dict[str, Any]] = {}
    for run in runs:
        configuration = run.configuration
        where = f"{experiment.source}: {configuration.name}"
        kind, base = experiment.task, experiment.base
        for _, value in configuration.values:
            kind = value.task or kind
            base = value.base if value.base is not None else base
        cls = config_class(kind)
        layers = [_base_layer(base, where), ("experiment settings", dict(experiment.settings))]
        for axis, value in configuration.values:
            layers.append((f"axis {axis}={value.label}", _axis_settings(axis, value.settings, cls, where)))
        if quick and experiment.quick_settings:
            layers.append(("quick", dict(experiment.quick_settings)))
        if overrides:
            layers.append(("--set", dict(overrides)))
        runner: dict[str, Any] = {
            "seed": run.seed,
            "output": str(exp_dir / "runs"),
            "experiment": run.name,
            "resume": "auto",
            "no_progress": True,
        }
        if kind in ("det", "seg") and scenes_dir is not None:
            runner["data_dir"] = str(scenes_dir)
        elif kind == "train" and data_dir:
            runner["data_dir"] = data_dir
        for _, value in configuration.values:
            if value.pretrained_from:
                key = "initial_checkpoint" if kind == "train" else "backbone_weights"
                runner[key] = (
                    _pretrained_checkpoint(value, configuration, run.seed, exp_dir, quick, where) if check else None
                )
        layers.append(("experiment runner", runner))
        try:
            merge_settings(cls, layers)
        except ConfigError as e:
            raise ExperimentError(f"{where}: {e}") from None
        item = PlannedRun(run, len(runs), kind, layers, exp_dir / "runs" / run.name, list(experiment.metrics))
        if check and configuration.name not in model_info:
            model_info[configuration.name] = check_configuration(kind, layers, where)
        item.model = model_info.get(configuration.name, {})
        planned.append(item)
    return planned


def check_configuration(kind: str, layers: list[tuple[str, dict[str, Any]]], where: str) -> dict[str, Any]:
    """Resolve one configuration's settings as the engine will (datasets opened, model arguments checked), build
    its model once on the CPU and count its parameters and FLOPs; any problem is an :class:`ExperimentError`."""
    import torch

    from ..models.factory import count_parameters
    from ..train import distributed as dist_utils
    from ..train.resolve import resolve_run_config

    task = task_for(kind)
    task.bind(dist_utils.DistInfo(device=torch.device("cpu")), lambda m: None, lambda m: None)
    # no run directory is looked at: the check resolves as a fresh run would
    check_layers = layers + [("check", {"resume": "", "experiment": "check", "device": "cpu"})]
    try:
        config = resolve_run_config(task, check_layers, task.info)
        with torch.random.fork_rng(devices=[]):
            model = task.build_model()
            _forward_once(kind, model, config)
    except Exception as e:  # noqa: BLE001 — whatever the model or the data rejects, named in one line
        raise ExperimentError(f"{where}: {' '.join(str(e).split()) or type(e).__name__}") from e
    info: dict[str, Any] = {"parameters": count_parameters(model), "gflops": None}
    try:
        info["gflops"] = _gflops(kind, model, config)
    except Exception:  # noqa: BLE001 — a FLOP count is a nicety; the run does not depend on it
        pass
    return info


def _input_size(kind: str, config: Any) -> tuple[int, int, int]:
    if kind == "train":
        return (config.in_chans, config.img_size, config.img_size)
    size = getattr(config, "crop_size", None) or getattr(config, "img_size", None) or 128
    return (3, size, size)


def _forward_once(kind: str, model: Any, config: Any) -> None:
    """One forward of an image of the training size (classification: the model; det/seg: the backbone), so that
    settings the model only rejects at run time (a window that does not fit a stage) fail here."""
    import torch

    if kind != "train":
        from ..dense.backbone import DenseBackbone
        from ..dense.weights import find_backbone

        wrapped = [m for m in model.modules() if isinstance(m, DenseBackbone)]  # detectors; segmenters: smp's encoder
        model = wrapped[0] if wrapped else find_backbone(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1, *_input_size(kind, config))))
    model.train(was_training)


def _gflops(kind: str, model: Any, config: Any) -> Optional[float]:
    """Classification: the whole model at the training input; det/seg: the backbone at the training input."""
    from ..tools.flops import count_flops

    if kind == "train":
        return count_flops(model, _input_size(kind, config)).gflops
    from ..dense.weights import find_backbone

    return count_flops(find_backbone(model), _input_size(kind, config)).gflops


# -- running -----------------------------------------------------------------------------------------------------


def _final_row(run_dir: Path) -> dict[str, Any]:
    from ..train.metrics import read_summary

    rows = read_summary(run_dir / "summary.csv")

    def number(text: str) -> Optional[float]:
        try:
            value = float(text)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    last = {k: number(v) for k, v in rows[-1].items()}
    speeds = [number(r.get("images/s")) for r in rows]
    speeds = [s for s in speeds if s]
    last["images_per_s_mean"] = sum(speeds) / len(speeds) if speeds else None
    return last


def execute(item: PlannedRun) -> dict[str, Any]:
    """Train one run in this process through the engine and write its ``result.json``."""
    from ..train.engine import train

    resumed = (item.run_dir / "last.pth").is_file()
    start = time.perf_counter()
    summary = train(item.layers, task_for(item.task))
    wall = time.perf_counter() - start
    row = _final_row(Path(summary["run_dir"]))
    result = {
        "run": item.run.name,
        "configuration": item.run.configuration.labels,
        "seed": item.run.seed,
        "task": item.task,
        "metrics": {m: row.get(m) for m in item.metrics},
        "final_row": row,
        "wall_seconds": wall,
        "train_seconds": summary.get("train_seconds"),
        "images_per_s": row.get("images_per_s_mean"),
        "parameters": summary.get("parameters") or item.model.get("parameters"),
        "gflops": item.model.get("gflops"),
        "epochs": summary.get("epochs"),
        "steps": summary.get("steps"),
        "resumed": resumed,
        "run_dir": str(item.run_dir),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(json.dumps(result, indent=2, default=str), item.run_dir / RESULT)
    return result


def _write_spec(item: PlannedRun) -> None:
    spec = {
        "task": item.task,
        "layers": [[where, values] for where, values in item.layers],
        "metrics": item.metrics,
        "model": item.model,
        "run": {"index": item.run.index, "total": item.total, "seed": item.run.seed},
        "configuration": [[a, v.label] for a, v in item.run.configuration.values],
    }
    item.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(spec, sort_keys=False), item.run_dir / RUN_SPEC)


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(item: PlannedRun, result: Mapping[str, Any], skipped: bool = False) -> str:
    found = result.get("metrics") or {}
    metric = next((m for m in item.metrics if found.get(m) is not None), item.metrics[0])
    value = found.get(metric)
    shown = f"{metric} {value:.3f}" if isinstance(value, (int, float)) else f"{metric} -"
    speed = result.get("images_per_s")
    parts = [shown, f"wall {_fmt_seconds(result.get('wall_seconds') or 0.0)}"]
    if speed:
        parts.append(f"{speed:.3g} img/s")
    if skipped:
        parts.append("finished before, skipped")
    elif result.get("resumed"):
        parts.append("resumed")
    return f"{item.label}: " + ", ".join(parts)


def run_experiment(
    experiment: Experiment,
    planned: list[PlannedRun],
    exp_dir: Path,
    parallel: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run what is not finished (in order; ``parallel`` > 1: that many worker processes at a time), printing a
    line per run, then write the report. Returns ``{"finished", "failed", "report"}``; a run stopped by a signal
    stops the experiment (``RunInterrupted`` propagates: run the same command again to continue)."""
    from .report import write_report

    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(experiment.source).read_text(), exp_dir / "experiment.yaml")
    failed: list[str] = []
    todo = []
    for item in planned:
        if item.finished:
            log(progress_line(item, json.loads((item.run_dir / RESULT).read_text()), skipped=True))
        else:
            todo.append(item)
    if parallel <= 1:
        for item in todo:
            log(f"{item.label}: running in {item.run_dir}")
            _write_spec(item)
            try:
                result = execute(item)
            except Exception as e:  # noqa: BLE001 — one failed run does not stop the grid
                from ..train.preemption import RunInterrupted

                if isinstance(e, RunInterrupted):  # the grid stops with the run; the same command continues both
                    message = str(e).split(". Continue with")[0]
                    raise RunInterrupted(
                        f"{item.label}: {message}. Run the same `datvit experiment run` command again to continue",
                        e.signum,
                    ) from None
                failed.append(item.run.name)
                log(f"{item.label}: failed: {' '.join(str(e).split()) or type(e).__name__}")
                continue
            log(progress_line(item, result))
    else:
        failed += _run_parallel(todo, parallel, log)
    report = write_report(exp_dir)
    log(f"report: {report}")
    return {"finished": len(planned) - len(failed), "failed": failed, "report": str(report)}


def _run_parallel(todo: list[PlannedRun], parallel: int, log: Callable[[str], None]) -> list[str]:
    """Each run in its own ``python -m datvit.experiments.runner RUN_DIR`` process, ``parallel`` at a time, with
    the cores shared out between them (OMP/MKL threads)."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < parallel:
            item = pending.pop(0)
            _write_spec(item)
            log_file = open(item.run_dir / "experiment_worker.log", "a")
            proc = subprocess.Popen(
                [sys.executable, "-m", "datvit.experiments.runner", str(item.run_dir)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
            log(f"{item.label}: running in {item.run_dir} (process {proc.pid}, log experiment_worker.log)")
            running.append((item, proc, log_file))
        time.sleep(0.5)
        for entry in list(running):
            item, proc, log_file = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log_file.close()
            if proc.returncode == 0 and item.finished:
                log(progress_line(item, json.loads((item.run_dir / RESULT).read_text())))
            else:
                failed.append(item.run.name)
                log(f"{item.label}: failed (exit status {proc.returncode}; see {item.run_dir}/experiment_worker.log)")
    return failed


def load_spec(run_dir: str | os.PathLike) -> PlannedRun:
    """The planned run a worker process executes, from ``RUN_DIR/experiment_run.yaml``."""
    from .grid import AxisValue

    run_dir = Path(run_dir)
    spec = yaml.safe_load((run_dir / RUN_SPEC).read_text())
    configuration = Configuration(tuple((a, AxisValue(v, {})) for a, v in spec["configuration"]))
    run = Run(spec["run"]["index"], configuration, spec["run"]["seed"])
    layers = [(where, values) for where, values in spec["layers"]]
    return PlannedRun(run, spec["run"]["total"], spec["task"], layers, run_dir, spec["metrics"], spec["model"])


def _worker(argv: list[str]) -> int:
    """``python -m datvit.experiments.runner RUN_DIR``: one run of a ``--parallel`` experiment."""
    from ..train.preemption import RunInterrupted

    try:
        execute(load_spec(argv[0]))
    except RunInterrupted as e:
        print(f"datvit experiment run: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 — the parent names the failed run and points at this log
        print(f"datvit experiment run: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
