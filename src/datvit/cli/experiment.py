"""``datvit experiment run|report|list``: a declared grid of training runs (YAML: base config, axes, seeds,
metrics) through the same engine as ``datvit train`` / ``det`` / ``seg``, one after another or N at a time,
resumable, with a report of mean ± std, 95% intervals and differences to a baseline paired by seed.

Every run has its own directory under ``<output>/<experiment>/runs``; a finished run (``result.json``) is not run
again and a run killed mid-way continues exactly from its ``last.pth``: run the same command again. The grid is
checked whole before the first run (unknown axis or setting, a value the model rejects, missing data), each
problem one line and exit status 2."""

from __future__ import annotations

import argparse
from typing import Any

from ._errors import run_with_user_errors
from ._run_args import UpdateKwargs, positive_int

EPILOG = """examples:
  datvit experiment list                                  # the shipped experiments
  datvit experiment run ablation-stages                   # D blocks in stages 1-4, 2-4, 3-4, 4, none; 3 seeds
  datvit experiment run backbones --parallel 2            # two runs at a time, the cores shared out
  datvit experiment run dense-backbones                   # after `backbones` (it fine-tunes its checkpoints)
  datvit experiment run my_grid.yaml --quick              # one seed, a few steps: does every run start?
  datvit experiment run ablation-stages --set epochs=1 --seeds 0 1 2 3 4
  datvit experiment report output/experiments/ablation-stages   # rebuild report.md, report.png, runs.csv
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a declared grid of training runs (axes × seeds) and report mean ± std and 95%% intervals",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="<action>")
    run = sub.add_parser(
        "run",
        help="run (or continue) every run of an experiment, then write its report",
        description="datvit experiment run: run (or continue) every run of an experiment, then write its report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("experiment", metavar="FILE|NAME", help="an experiment YAML file or a shipped experiment's name")
    run.add_argument(
        "--output",
        default="output/experiments",
        metavar="DIR",
        help="parent of the experiment directories: runs go to DIR/<name>/runs (--quick: DIR/<name>-quick)",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="one seed and the file's quick settings (a fraction of an epoch on a data subset): a smoke test",
    )
    run.add_argument(
        "--parallel", type=positive_int, default=1, metavar="N", help="runs at a time, each in its own process"
    )
    run.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED", help="instead of the file's seeds")
    run.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        action=UpdateKwargs,
        default={},
        metavar="KEY=VALUE",
        help="settings laid over every run (after the axes), e.g. epochs=1 workers=0",
    )
    run.add_argument(
        "--data-dir",
        metavar="DIR",
        help="Fashion-MNIST IDX files (or the image folder) for classification runs and for generating scenes "
        "(default: the Debian package dataset-fashion-mnist)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="check the grid and list the runs without training anything"
    )
    run.set_defaults(func=lambda args: run_with_user_errors("experiment run", lambda: _run(args)))

    report = sub.add_parser(
        "report",
        help="rebuild report.md, report.png, runs.csv and summary.json from an experiment's finished runs",
        description="datvit experiment report: rebuild the report of an experiment directory from its finished runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("directory", metavar="DIR", help="an experiment directory (<output>/<name>)")
    report.add_argument(
        "--output", default=None, metavar="DIR", help="write the report here (default: into DIR itself)"
    )
    report.set_defaults(func=lambda args: run_with_user_errors("experiment report", lambda: _report(args)))

    listing = sub.add_parser("list", help="the shipped experiments, with their runs and description")
    listing.set_defaults(func=lambda args: run_with_user_errors("experiment list", lambda: _list()))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> Any:
    from ..experiments import experiment_dir, load_experiment, plan, run_experiment

    experiment = load_experiment(args.experiment)
    planned = plan(
        experiment,
        args.output,
        quick=args.quick,
        seeds=args.seeds,
        overrides=args.overrides,
        data_dir=args.data_dir,
    )
    exp_dir = experiment_dir(args.output, experiment.name, args.quick)
    done = sum(item.finished for item in planned)
    print(
        f"experiment {experiment.name}: {len(planned)} runs ({done} finished before) in {exp_dir}; "
        f"checked: every configuration's settings, data and model",
        flush=True,
    )
    if args.dry_run:
        for item in planned:
            size = item.model.get("parameters")
            flops = item.model.get("gflops")
            extra = f" ({size / 1e6:.3f}M parameters" + (f", {flops:.4f} GFLOPs)" if flops else ")") if size else ""
            print(f"{item.label} [{item.task}]: {item.run_dir}{extra}")
        return 0
    outcome = run_experiment(experiment, planned, exp_dir, parallel=args.parallel, log=lambda m: print(m, flush=True))
    if outcome["failed"]:
        raise RuntimeError(
            f"{len(outcome['failed'])} run(s) failed: {', '.join(outcome['failed'])} (their logs are in their run "
            "directories; run the same command again to retry them)"
        )
    return 0


def _report(args: argparse.Namespace) -> Any:
    import shutil
    from pathlib import Path

    from ..experiments import write_report

    directory = Path(args.directory)
    if not (directory / "runs").is_dir():
        raise FileNotFoundError(f"{directory} is not an experiment directory (no runs/ in it)")
    target = directory
    if args.output:
        target = Path(args.output)
        target.mkdir(parents=True, exist_ok=True)
        if (directory / "experiment.yaml").is_file():
            shutil.copy(directory / "experiment.yaml", target / "experiment.yaml")
        if not (target / "runs").exists():
            (target / "runs").symlink_to((directory / "runs").resolve())
    path = write_report(target)
    print(path.read_text())
    print(f"written: {path}, {target / 'report.png'}, {target / 'runs.csv'}")
    return 0


def _list() -> Any:
    from ..experiments import load_experiment, shipped_experiments

    for name in shipped_experiments():
        experiment = load_experiment(name)
        n = len(experiment.configurations()) * len(experiment.seeds)
        first = experiment.description.split(". ")[0].rstrip(".")
        print(f"{name}: {n} runs ({len(experiment.configurations())} configurations × {len(experiment.seeds)} seeds)")
        if first:
            print(f"    {first}.")
    return 0
