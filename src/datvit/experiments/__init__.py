"""Experiments: a declared grid of training runs (an axis per compared setting, several seeds) run through the one
training engine, resumably, with a report of mean ± std, 95% intervals and paired differences per configuration.

``datvit experiment run FILE|NAME`` and ``datvit experiment report DIR`` are the command line; the shipped
experiments (``ablation-stages``, ``backbones``, ``dense-backbones``) are YAML files in ``datvit/configs/experiments``.
"""

from .grid import Experiment, ExperimentError, load_experiment, parse_experiment, shipped_experiments
from .report import mean_interval, summarise, write_report
from .runner import experiment_dir, plan, run_experiment

__all__ = [
    "Experiment",
    "ExperimentError",
    "experiment_dir",
    "load_experiment",
    "mean_interval",
    "parse_experiment",
    "plan",
    "run_experiment",
    "shipped_experiments",
    "summarise",
    "write_report",
]
