"""The report of an experiment, rebuilt from its finished runs (``runs/*/result.json``) alone.

* ``runs.csv`` — one row per finished run: configuration, seed, the collected metrics, wall and training time,
  images/s, parameters and GFLOPs.
* ``report.md`` — per configuration and metric: n, mean ± std (sample std over seeds) and the 95% t-interval of
  the mean; per configuration and metric, the difference to the baseline configuration paired by seed, with its
  95% t-interval and whether it exceeds the seed spread (the interval excludes 0); the figure.
* ``report.png`` — each metric's mean per configuration with its 95% interval as error bars and every seed's value.
* ``summary.json`` — the same numbers for programs.

With n seeds, the interval is mean ± t(0.975, n−1)·std/√n: with 3 seeds t = 4.30, so a difference must be large
against the seed spread to count. One seed gives no interval ("n/a").
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..utils.files import atomic_write_text
from .grid import Experiment, parse_experiment

# two-sided 95% quantiles of Student's t, t(0.975, df), for df = 1..30 (scipy when installed gives the rest)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: int) -> float:
    """t(0.975, df): the factor of a two-sided 95% interval."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        return _T975[df - 1] if df <= len(_T975) else 1.960


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample std, and the 95% t-interval of the mean (None where n < 2)."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "low": None, "high": None, "half_width": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "low": None, "high": None, "half_width": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half, "half_width": half}


def read_results(exp_dir: str | os.PathLike) -> list[dict[str, Any]]:
    out = []
    for path in sorted(Path(exp_dir).glob("runs/*/result.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _experiment(exp_dir: Path, results: list[dict[str, Any]]) -> Optional[Experiment]:
    spec = exp_dir / "experiment.yaml"
    if not spec.is_file():
        return None
    import yaml

    return parse_experiment(yaml.safe_load(spec.read_text()) or {}, str(spec))


def _config_key(result: dict[str, Any], axes: Sequence[str]) -> str:
    labels = result.get("configuration") or {}
    return ",".join(f"{a}={labels.get(a)}" for a in axes) or "default"


def summarise(exp_dir: str | os.PathLike) -> dict[str, Any]:
    """The numbers of the report: per configuration and metric the seed statistics, the paired differences to
    the baseline, and every run."""
    exp_dir = Path(exp_dir)
    results = read_results(exp_dir)
    experiment = _experiment(exp_dir, results)
    if experiment is not None:
        axes = list(experiment.axes)
        order = [c.name for c in experiment.configurations()]
        metrics = list(experiment.metrics)
        baselines = {
            c.name: b.name for c in experiment.configurations() if (b := experiment.baseline_for(c)) is not None
        }
        baseline_text = ", ".join(f"{a}={v}" for a, v in (experiment.baseline or {}).items()) or None
    else:
        axes = sorted({a for r in results for a in (r.get("configuration") or {})})
        order = []
        metrics = sorted({m for r in results for m in (r.get("metrics") or {})})
        baselines, baseline_text = {}, None
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_config_key(result, axes), []).append(result)
    names = [n for n in order if n in groups] + sorted(n for n in groups if n not in order)
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = sorted(groups[name], key=lambda r: r.get("seed", 0))
        entry: dict[str, Any] = {"seeds": [r.get("seed") for r in runs], "metrics": {}}
        for metric in metrics:
            entry["metrics"][metric] = mean_interval([(r.get("metrics") or {}).get(metric) for r in runs])
        for key in ("wall_seconds", "train_seconds", "images_per_s"):
            entry[key] = mean_interval([r.get(key) for r in runs])
        entry["parameters"] = runs[0].get("parameters")
        entry["gflops"] = runs[0].get("gflops")
        table[name] = entry
    differences: dict[str, dict[str, Any]] = {}
    for name in names:
        baseline_name = baselines.get(name)
        if baseline_name is None or baseline_name == name or baseline_name not in groups:
            continue
        base_by_seed = {r.get("seed"): r for r in groups[baseline_name]}
        by_seed = {r.get("seed"): r for r in groups[name]}
        seeds = sorted(set(by_seed) & set(base_by_seed))
        differences[name] = {"baseline": baseline_name, "seeds": seeds, "metrics": {}}
        for metric in metrics:
            deltas = []
            for s in seeds:
                a, b = (
                    (by_seed[s].get("metrics") or {}).get(metric),
                    (base_by_seed[s].get("metrics") or {}).get(metric),
                )
                if a is not None and b is not None:
                    deltas.append(a - b)
            stats = mean_interval(deltas)
            stats["exceeds_seed_spread"] = None if stats["low"] is None else bool(stats["low"] > 0 or stats["high"] < 0)
            differences[name]["metrics"][metric] = stats
    return {
        "experiment": experiment.name if experiment is not None else exp_dir.name,
        "description": experiment.description if experiment is not None else "",
        "axes": axes,
        "metrics": metrics,
        "baseline": baseline_text,
        "baselines": sorted(set(baselines.values())),
        "configurations": table,
        "differences": differences,
        "runs": results,
        "planned_runs": len(experiment.configurations()) * len(experiment.seeds) if experiment is not None else None,
    }


def _f(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return _f(stats["mean"], digits)
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _interval(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["low"] is None:
        return "n/a"
    return f"[{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"


CSV_FIXED = ("configuration", "seed", "task")
CSV_TAIL = ("wall_seconds", "train_seconds", "images_per_s", "parameters", "gflops", "epochs", "steps", "run")


def runs_csv(summary: dict[str, Any]) -> str:
    axes, metrics = summary["axes"], summary["metrics"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_FIXED, *axes, *metrics, *CSV_TAIL])
    for r in sorted(summary["runs"], key=lambda r: (_config_key(r, axes), r.get("seed", 0))):
        labels = r.get("configuration") or {}
        writer.writerow(
            [_config_key(r, axes), r.get("seed"), r.get("task")]
            + [labels.get(a) for a in axes]
            + [(r.get("metrics") or {}).get(m) for m in metrics]
            + [r.get(k) for k in CSV_TAIL]
        )
    return buf.getvalue()


def markdown(summary: dict[str, Any], figure: Optional[str]) -> str:
    metrics = summary["metrics"]
    table = summary["configurations"]
    n_runs = len(summary["runs"])
    planned = summary.get("planned_runs")
    lines = [f"# Experiment {summary['experiment']}", ""]
    if summary["description"]:
        lines += [summary["description"], ""]
    lines += [
        f"{n_runs} finished run(s)" + (f" of {planned} planned" if planned else "") + "; metrics of the final "
        "epoch (the final weights) on the evaluation split. mean ± std over seeds (sample std), and the 95% "
        "t-interval of the mean.",
        "",
    ]
    header = ["configuration", "seeds"] + [f"{m} mean ± std" for m in metrics] + [f"{m} 95% CI" for m in metrics]
    header += ["params (M)", "GFLOPs", "images/s", "wall / run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in table.items():
        mark = " (baseline)" if name in summary["baselines"] else ""
        cells = [f"{name}{mark}", str(len(entry["seeds"]))]
        cells += [_pm(entry["metrics"][m]) for m in metrics]
        cells += [_interval(entry["metrics"][m]) for m in metrics]
        params = entry.get("parameters")
        cells += [
            _f(params / 1e6 if params else None, 3),
            _f(entry.get("gflops"), 4),
            _f(entry["images_per_s"]["mean"], 0),
            _f((entry["wall_seconds"]["mean"] or 0) / 60, 1) + " min" if entry["wall_seconds"]["mean"] else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary["differences"]:
        lines += [
            f"## Differences to the baseline ({summary['baseline']}), paired by seed",
            "",
            "Per seed, this configuration's value minus its baseline's (the baseline's values on the axes it names, "
            "the configuration's own on the others); mean ± std of those differences and their 95% t-interval. "
            "**exceeds seed spread**: the interval excludes 0.",
            "",
        ]
        header = ["configuration", "baseline", "paired seeds"]
        for m in metrics:
            header += [f"Δ {m}", "95% CI", "exceeds seed spread"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, diff in summary["differences"].items():
            cells = [name, diff["baseline"], str(len(diff["seeds"]))]
            for m in metrics:
                stats = diff["metrics"][m]
                verdict = stats["exceeds_seed_spread"]
                cells += [
                    _pm(stats),
                    _interval(stats),
                    "n/a" if verdict is None else ("**yes**" if verdict else "no"),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    elif summary["baseline"] is None:
        lines += ["No baseline configuration is declared (`baseline:` in the experiment file).", ""]
    if figure:
        lines += [f"![{summary['experiment']}]({figure})", ""]
    lines += ["Every run: `runs.csv`; the curves of each run: its `summary.csv`, plots and TensorBoard events.", ""]
    return "\n".join(lines)


def draw_figure(summary: dict[str, Any], path: Path) -> Optional[Path]:
    """Mean and 95% interval per configuration (one panel per metric, at most three), every seed as a dot. A panel
    shows the configurations that have the metric (a grid over detection and segmentation heads has mAP for one,
    mIoU for the other); with more than six of them the panels are stacked, one per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    configurations = summary["configurations"]
    panels = []
    for metric in summary["metrics"][:3]:
        names = [n for n in configurations if configurations[n]["metrics"][metric]["mean"] is not None]
        if names:
            panels.append((metric, names))
    if not panels:
        return None
    widest = max(len(names) for _, names in panels)
    one = max(3.5, 0.8 * widest + 1.5)
    stacked = widest > 6
    fig = Figure(figsize=(one, 4.2 * len(panels)) if stacked else (one * len(panels), 4.4))
    FigureCanvasAgg(fig)
    axes = (
        fig.subplots(len(panels), 1, squeeze=False)[:, 0] if stacked else fig.subplots(1, len(panels), squeeze=False)[0]
    )
    for ax, (metric, names) in zip(axes, panels):
        for i, name in enumerate(names):
            stats = configurations[name]["metrics"][metric]
            err = stats["half_width"] or 0.0
            color = "tab:orange" if name in summary["baselines"] else "tab:blue"
            ax.errorbar([i], [stats["mean"]], yerr=[err], fmt="o", color=color, capsize=5, markersize=7)
            seeds = [
                (r.get("metrics") or {}).get(metric) for r in summary["runs"] if _config_key(r, summary["axes"]) == name
            ]
            seeds = [s for s in seeds if s is not None]
            ax.scatter([i + 0.15] * len(seeds), seeds, s=12, color="gray", alpha=0.7, zorder=3)
        ax.set_xticks(range(len(names)))
        # the values only, one line per axis; the axes' names label the x axis
        labels = ["\n".join(part.split("=", 1)[-1] for part in n.split(",")) for n in names]
        ax.set_xticklabels(labels, fontsize=7, rotation=0 if len(summary["axes"]) > 1 else 30)
        ax.set_xlabel(" / ".join(summary["axes"]), fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{summary['experiment']}: mean and 95% interval per configuration, grey dots: seeds", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def write_report(exp_dir: str | os.PathLike) -> Path:
    """Write runs.csv, report.png, report.md and summary.json into ``exp_dir``; returns report.md's path."""
    exp_dir = Path(exp_dir)
    summary = summarise(exp_dir)
    atomic_write_text(runs_csv(summary), exp_dir / "runs.csv")
    figure = draw_figure(summary, exp_dir / "report.png") if summary["runs"] else None
    atomic_write_text(markdown(summary, figure.name if figure else None), exp_dir / "report.md")
    atomic_write_text(json.dumps(summary, indent=2, default=str), exp_dir / "summary.json")
    return exp_dir / "report.md"
