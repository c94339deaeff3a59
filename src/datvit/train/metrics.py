"""What a run shows and leaves behind: running averages, ``summary.csv`` and the loss/accuracy/lr plots.

The history (one row per epoch, and a point every ``--log-interval`` steps) lives in the checkpoint, so a resumed
run rewrites complete files rather than appending to possibly torn ones.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ..utils.files import atomic_savefig, atomic_write_text

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "images/s", "seconds")


class RunningSum:
    """Sum and count of a per-sample quantity, kept as plain floats so it can go into a checkpoint."""

    def __init__(self, total: float = 0.0, count: float = 0.0):
        self.total = total
        self.count = count

    def add(self, value_sum: float, n: float) -> None:
        self.total += value_sum
        self.count += n

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "count": self.count}

    @classmethod
    def from_state(cls, state: Optional[dict[str, float]]) -> "RunningSum":
        return cls(**state) if state else cls()


# (key, label, format) of the evaluation columns of classification, the default of the functions below; a
# training task declares its own (``datvit.train.task.MetricSpec``).
CLASSIFICATION_EVAL = (("eval_loss", "eval_loss", ".4f"), ("eval_top1", "top1", ".2f"), ("eval_top5", "top5", ".2f"))


def format_summary_line(
    row: dict[str, Any],
    epochs: int,
    eval_columns: Sequence[tuple[str, str, str]] = CLASSIFICATION_EVAL,
    best: str = "eval_top1",
) -> str:
    """The one line printed per epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    for key, label, fmt in eval_columns:
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:{fmt}}")
    if row.get("ema_" + best) is not None:
        label, fmt = next(((lb, f) for k, lb, f in eval_columns if k == best), (best, ".4f"))
        parts.append(f"ema_{label} {row['ema_' + best]:{fmt}}")
    speed = row["images/s"]
    parts += [
        f"lr {row['lr']:.3g}",
        f"{speed:.0f} img/s" if speed >= 10 else f"{speed:.2f} img/s",
        f"{row['seconds']:.0f} s",
    ]
    return "  ".join(parts)


def summary_columns(eval_keys: Sequence[str]) -> tuple[str, ...]:
    """summary.csv's fixed columns around a task's evaluation columns."""
    return ("epoch", "train_loss", *eval_keys, "lr", "images/s", "seconds")


def summary_csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """summary.csv: the fixed columns, plus the EMA model's evaluation when a run keeps an EMA."""
    rows = list(rows)
    columns = list(columns)
    ema = [f"ema_{c}" for c in columns if c.startswith("eval_")]
    if any(r.get(c) is not None for r in rows for c in ema):
        columns += ema
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _fmt(row[k])) for k in columns})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_summary(
    run_dir: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS
) -> Path:
    path = Path(run_dir) / "summary.csv"
    atomic_write_text(summary_csv_text(rows, columns), path)
    return path


def read_summary(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _figure(title: str, ylabel: str):
    # The object API with the Agg canvas: no global backend switch, works without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, ax, path: Path) -> Path:
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    return path


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


# file: (title, y label, per-step key and label, per-epoch (key, label) pairs) — classification's; other tasks pass
# their own metric plot (``task_plot``) in place of accuracy.png
PLOTS = {
    "loss.png": (
        "loss",
        "loss",
        ("loss", "train (steps)"),
        (("train_loss", "train (epoch)"), ("eval_loss", "eval"), ("ema_eval_loss", "eval (EMA)")),
    ),
    "accuracy.png": (
        "accuracy",
        "accuracy (%)",
        ("top1", "train top-1 (steps)"),
        (("eval_top1", "eval top-1"), ("eval_top5", "eval top-5"), ("ema_eval_top1", "EMA top-1")),
    ),
    "lr.png": ("learning rate", "lr", ("lr", "lr"), ()),
}


def task_plots(
    name: str, title: str, ylabel: str, series: Sequence[tuple[str, str]], step_metric: Optional[tuple[str, str]] = None
) -> dict[str, tuple]:
    """The three plots of a run whose evaluation curves are ``series`` ((key, label) per curve; each also drawn
    for the EMA model when it has values), in ``<name>.png``."""
    ema = tuple((f"ema_{k}", f"{label} (EMA)") for k, label in series[:1])
    return {
        "loss.png": PLOTS["loss.png"],
        f"{name}.png": (title, ylabel, step_metric or (None, None), tuple(series) + ema),
        "lr.png": PLOTS["lr.png"],
    }


def plot_curves(
    run_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    plots: Optional[dict[str, tuple]] = None,
) -> list[Path]:
    """loss.png, accuracy.png (or the task's metric plot) and lr.png in ``run_dir``: per-step training points
    (x in fractional epochs) and per-epoch evaluation points."""
    run_dir = Path(run_dir)
    written = []
    for name, (title, ylabel, (step_key, step_label), epoch_series) in (plots or PLOTS).items():
        fig, ax = _figure(title, ylabel)
        points = [s for s in steps if step_key is not None and s.get(step_key) is not None]
        if points:
            ax.plot([s["epoch"] for s in points], [s[step_key] for s in points], lw=0.8, alpha=0.7, label=step_label)
        elif step_key == "lr":
            epoch_series = (("lr", "lr"),)
        for key, label in epoch_series:
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, marker="o", label=label)
        written.append(_save(fig, ax, run_dir / name))
    return written
