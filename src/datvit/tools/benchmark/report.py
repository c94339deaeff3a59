"""Turning the measurements into ratios, target checks, text/markdown tables and a PNG bar chart."""

from __future__ import annotations

from typing import Any, Optional

# The project's speed targets, for the 2-core CPU, fp32 eager, batch 32 (ratio = throughput ratio, > 1 = faster).
TARGETS = [
    dict(
        name="dat_tiny inference b32: fast / reference",
        model="dat_tiny",
        kind="inference",
        batch=32,
        metric="fast_over_reference",
        threshold=1.4,
    ),
    dict(
        name="dat_tiny training b32: fast / reference",
        model="dat_tiny",
        kind="train",
        batch=32,
        metric="fast_over_reference",
        threshold=1.25,
    ),
    dict(
        name="dat_tiny inference b32: fast / Swin-T",
        model="dat_tiny",
        kind="inference",
        batch=32,
        metric="fast_over_swin_t",
        threshold=1.0,
    ),
    dict(
        name="dat_tiny training b32: fast / Swin-T",
        model="dat_tiny",
        kind="train",
        batch=32,
        metric="fast_over_swin_t",
        threshold=1.0,
    ),
    dict(
        name="datpp_tiny inference b32: fast / Swin-T",
        model="datpp_tiny",
        kind="inference",
        batch=32,
        metric="fast_over_swin_t",
        threshold=1.0,
    ),
    dict(
        name="datpp_tiny training b32: fast / Swin-T",
        model="datpp_tiny",
        kind="train",
        batch=32,
        metric="fast_over_swin_t",
        threshold=0.9,
    ),
    dict(
        name="dat_tiny inference b32: fast, fraction of fp32 matmul peak",
        model="dat_tiny",
        kind="inference",
        batch=32,
        metric="fraction_of_peak",
        threshold=0.6,
    ),
]
BASELINES = ("swin_t", "convnext_t")


def _find(results: list[dict], **match) -> Optional[dict]:
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def compute_ratios(results: list[dict]) -> list[dict]:
    """Throughput ratios per (model, mode, kind, batch): fast/reference and each DAT path over each baseline, from
    the medians and (suffix ``_best``) from the best calls."""
    ratios = []
    keys = dict.fromkeys(
        (r["model"], r["mode"], r["kind"], r["batch"]) for r in results if r["path"] in ("fast", "reference")
    )
    for model, mode, kind, batch in keys:
        row: dict[str, Any] = dict(model=model, mode=mode, kind=kind, batch=batch)
        fast = _find(results, model=model, path="fast", mode=mode, kind=kind, batch=batch)
        ref = _find(results, model=model, path="reference", mode=mode, kind=kind, batch=batch)

        def put(name, a, b):
            if a and b:
                row[name] = a["images_per_s"] / b["images_per_s"]
                if a.get("images_per_s_best") and b.get("images_per_s_best"):
                    row[name + "_best"] = a["images_per_s_best"] / b["images_per_s_best"]

        put("fast_over_reference", fast, ref)
        for base in BASELINES:
            b = _find(results, label=base, mode=mode, kind=kind, batch=batch)
            put(f"fast_over_{base}", fast, b)
            put(f"reference_over_{base}", ref, b)
        if fast and fast.get("fraction_of_peak") is not None:
            row["fraction_of_peak"] = fast["fraction_of_peak"]
            row["fraction_of_peak_best"] = fast["fraction_of_peak"] * fast["images_per_s_best"] / fast["images_per_s"]
        ratios.append(row)
    return ratios


def train_ratio_spread(train_runs: list[dict]) -> list[dict]:
    """Training-step throughput ratios per interleaved run (``train_interleaved`` worker results): for each DAT
    subject, over its reference path and over each baseline, the ratio of median step times in every run, then
    the median, min and max over the runs — the spread says how far one run can be trusted."""
    import statistics

    per_key: dict[tuple, list[float]] = {}
    for run in train_runs:
        timing = run.get("timing") or {}
        if run.get("status") != "ok":
            continue
        for label, t in timing.items():
            model, _, path = label.partition(":")
            if path not in ("fast", "reference"):
                continue
            others = [f"{model}:reference"] if path == "fast" else []
            for other in others + list(BASELINES):
                if other in timing:
                    key = (run["mode"], run["batch"], label, other)
                    per_key.setdefault(key, []).append(timing[other]["ms_median"] / t["ms_median"])
    out = []
    for (mode, batch, label, other), values in per_key.items():
        out.append(
            dict(
                mode=mode,
                batch=batch,
                numerator=label,
                denominator=other,
                runs=values,
                median=statistics.median(values),
                min=min(values),
                max=max(values),
            )
        )
    return out


def train_spread_table(spread: list[dict]) -> str:
    rows = [
        [
            r["numerator"],
            r["denominator"],
            r["mode"],
            str(r["batch"]),
            _fmt(r["median"], ".3f"),
            f"{r['min']:.3f}–{r['max']:.3f}",
            " ".join(f"{v:.3f}" for v in r["runs"]),
        ]
        for r in spread
    ]
    return _md_table(["subject", "over", "mode", "batch", "median ratio", "spread (min–max)", "per run"], rows)


def onnxruntime_ratios(results: list[dict], runtime: str = "onnxruntime") -> list[dict]:
    """The rows of ``runtime`` (path ``onnxruntime`` or ``openvino``) against PyTorch eager of the same model and
    batch (DAT: the fast path), same run; keys ``{runtime}_images_per_s`` and ``{runtime}_over_eager``."""
    out = []
    for r in results:
        if r.get("path") != runtime:
            continue
        eager = _find(
            results, model=r["model"], path="fast", mode=r["mode"], kind=r["kind"], batch=r["batch"]
        ) or _find(results, model=r["model"], path="timm", mode=r["mode"], kind=r["kind"], batch=r["batch"])
        out.append(
            dict(
                model=r["model"],
                batch=r["batch"],
                eager_images_per_s=eager and eager["images_per_s"],
                **{
                    f"{runtime}_images_per_s": r["images_per_s"],
                    f"{runtime}_over_eager": eager and r["images_per_s"] / eager["images_per_s"],
                },
            )
        )
    return out


def check_targets(ratios: list[dict], mode: str = "eager") -> list[dict]:
    out = []
    for t in TARGETS:
        row = _find(ratios, model=t["model"], mode=mode, kind=t["kind"], batch=t["batch"])
        value = None if row is None else row.get(t["metric"])
        best = None if row is None else row.get(t["metric"] + "_best")
        out.append(
            dict(
                name=t["name"],
                mode=mode,
                metric=t["metric"],
                threshold=t["threshold"],
                value=value,
                value_best=best,
                met=None if value is None else bool(value >= t["threshold"]),
            )
        )
    return out


# -- tables ---------------------------------------------------------------------------------------------------------


def _fmt(v, spec=".1f", none="–"):
    return none if v is None else format(v, spec)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_table(report: dict) -> str:
    """One row per (subject, mode): inference and training images/s, GFLOP/s, % of peak, peak memory."""
    results, memory = report["results"], report.get("memory", [])
    inf_batches = sorted({r["batch"] for r in results if r["kind"] == "inference"})
    train_batches = sorted({r["batch"] for r in results if r["kind"] == "train"})
    header = ["model", "path", "mode"]
    header += [f"infer b{b} img/s" for b in inf_batches]
    header += [f"train b{b} img/s" for b in train_batches]
    big = max(inf_batches) if inf_batches else None
    if big is not None:
        header += [f"infer b{big} GFLOP/s", f"infer b{big} % peak"]
    header += [f"train b{b} peak MB" for b in train_batches]
    header += ["busy other cores"]
    rows = []
    for label, mode in dict.fromkeys((r["label"], r["mode"]) for r in results):
        rs = [r for r in results if r["label"] == label and r["mode"] == mode]
        first = rs[0]
        row = [first["model"], first["path"], mode]
        for b in inf_batches:
            r = _find(rs, kind="inference", batch=b)
            row.append(_fmt(r and r["images_per_s"], ".2f"))
        for b in train_batches:
            r = _find(rs, kind="train", batch=b)
            row.append(_fmt(r and r["images_per_s"], ".2f"))
        if big is not None:
            r = _find(rs, kind="inference", batch=big)
            row.append(_fmt(r and r.get("gflops"), ".1f"))
            frac = r.get("fraction_of_peak") if r else None
            row.append(_fmt(None if frac is None else 100 * frac, ".0f"))
        for b in train_batches:
            m = _find(memory, label=label, batch=b, mode=mode)
            row.append(_fmt(m and m.get("peak_extra_mb"), ".0f"))
        bgs = [r["background_cores"] for r in rs if r.get("background_cores") is not None]
        row.append(_fmt(max(bgs) if bgs else None, ".2f"))
        rows.append(row)
    return _md_table(header, rows)


def ratios_table(ratios: list[dict]) -> str:
    cols = ["fast_over_reference"] + [f"fast_over_{b}" for b in BASELINES] + [f"reference_over_{b}" for b in BASELINES]
    cols = [c for c in cols if any(c in r for r in ratios)]
    cols = [c for c in cols if not c.endswith("_best")]
    header = ["model", "mode", "kind", "batch"] + [c.replace("_over_", " / ") for c in cols]
    rows = [[r["model"], r["mode"], r["kind"], str(r["batch"])] + [_fmt(r.get(c), ".2f") for c in cols] for r in ratios]
    return _md_table(header, rows)


def targets_table(targets: list[dict]) -> str:
    rows = []
    for t in targets:
        pct = t["metric"] == "fraction_of_peak"

        def show(v):
            return (_fmt(v * 100, ".0f") + "%") if pct and v is not None else _fmt(v, ".2f")

        need = f"≥ {t['threshold'] * 100:.0f}%" if pct else f"≥ {t['threshold']:.2f}"
        met = "–" if t["met"] is None else ("met" if t["met"] else "NOT met")
        rows.append([t["name"], need, show(t["value"]), show(t.get("value_best")), met])
    return _md_table(["target (fp32 eager)", "needed", "measured (medians)", "from best calls", "verdict"], rows)


def compile_table(compiles: list[dict]) -> str:
    """One row per compile measurement; 'compiled / Swin-T compiled' divides by timm's Swin-T under the same
    treatment (same kind, batch and mode; separate processes, so less exact than the in-process ratios)."""
    swin = {
        (c["kind"], c["batch"], c["mode"]): c["compiled"]["images_per_s"]
        for c in compiles
        if c.get("status") == "ok" and c.get("label") == "swin_t"
    }
    rows = []
    for c in compiles:
        treatment = c["mode"] + (" + freezing" if c.get("freezing") else "")
        if c.get("status") == "ok":
            base = swin.get((c["kind"], c["batch"], c["mode"]))
            rows.append(
                [
                    c["label"],
                    c["kind"],
                    str(c["batch"]),
                    treatment,
                    "ok",
                    _fmt(c["compile_s"], ".0f"),
                    _fmt(c["compiled"]["images_per_s"], ".2f"),
                    _fmt(c["eager_same_process"]["images_per_s"], ".2f"),
                    _fmt(c["speedup_vs_eager"], ".2f"),
                    _fmt(base and c["compiled"]["images_per_s"] / base, ".2f"),
                ]
            )
        else:
            rows.append(
                [
                    c["label"],
                    c["kind"],
                    str(c["batch"]),
                    treatment,
                    c.get("status", "?"),
                    _fmt(c.get("wall_s"), ".0f") + " (wall)",
                    "–",
                    "–",
                    "–",
                    "–",
                ]
            )
    return _md_table(
        [
            "model",
            "kind",
            "batch",
            "mode",
            "status",
            "compile s",
            "compiled img/s",
            "eager img/s (same process)",
            "compiled / eager",
            "compiled / Swin-T compiled",
        ],
        rows,
    )


def module_table(module: dict) -> str:
    rows = []
    for kind in ("forward", "forward_backward"):
        f = module["timings"].get(f"fast/{kind}")
        r = module["timings"].get(f"reference/{kind}")
        if not f or not r:
            continue
        rows.append(
            [
                kind,
                _fmt(f["ms_median"], ".2f"),
                _fmt(r["ms_median"], ".2f"),
                _fmt(r["ms_median"] / f["ms_median"], ".2f"),
                _fmt(f.get("gflops"), ".1f"),
                _fmt(r.get("gflops"), ".1f"),
            ]
        )
    return _md_table(["pass", "fast ms", "reference ms", "fast speed-up", "fast GFLOP/s", "reference GFLOP/s"], rows)


def markdown_report(report: dict) -> str:
    m = report["machine"]
    peak = report.get("matmul_peak", {}).get("peak_gflops")
    parts = [
        "# datvit benchmark",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']['model']} ({m['usable_cpus']} usable CPUs, {m['torch_threads']} torch threads), "
        f"device {m['device']}{' ' + m['gpu']['name'] if 'gpu' in m else ''}, torch {m['torch']}, timm "
        f"{m['timm']}, datvit {m['datvit']}; CPU allocator {m.get('cpu_allocator', '?')}; fp32 matmul peak measured {_fmt(peak, '.0f')} GFLOP/s (torch.mm alone {_fmt(report.get('matmul_peak', {}).get('peak_gflops_mm'), '.0f')}); load average "
        f"at start {m.get('load_average_start')}, at end {m.get('load_average_end')}.",
        "",
        "## Throughput (images/s, median) and peak memory of a training step",
        "",
        "GFLOP/s = FLOPs per image (FlopCounterMode; for DAT the reference path's count) × images/s; % peak is "
        "against the measured fp32 matmul peak. 'busy other cores': the most, over the row's measurements, of the "
        "mean CPU cores other processes used during the timed calls (≈ 0 on a quiet machine).",
        "",
        results_table(report),
        "",
        "## Ratios (throughput; > 1 = the first is faster)",
        "",
        ratios_table(report["ratios"]),
        "",
        "## Targets",
        "",
        targets_table(report["targets"]),
    ]
    for runtime, title in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
        if not report.get(runtime):
            continue
        rows = [
            [
                r["model"],
                str(r["batch"]),
                _fmt(r[f"{runtime}_images_per_s"], ".2f"),
                _fmt(r["eager_images_per_s"], ".2f"),
                _fmt(r[f"{runtime}_over_eager"], ".2f"),
            ]
            for r in report[runtime]
        ]
        parts += [
            "",
            f"## {title} (CPU, fp32) next to PyTorch eager, interleaved",
            "",
            _md_table(["model", "batch", f"{runtime} img/s", "eager img/s", f"{runtime} / eager"], rows),
        ]
    if report.get("train_ratio_spread"):
        parts += [
            "",
            "## Training steps: ratios per interleaved run (> 1 = the subject is faster)",
            "",
            train_spread_table(report["train_ratio_spread"]),
        ]
    if report.get("compile"):
        parts += ["", "## torch.compile", "", compile_table(report["compile"])]
    if report.get("module"):
        mod = report["module"]
        parts += ["", f"## DeformableAttention alone ({mod['shape']})", "", module_table(mod)]
    flops = report.get("flops", {})
    if flops:
        rows = [
            [
                k,
                _fmt(v["forward_gflop"], ".3f"),
                _fmt(v.get("executed_fast_forward_gflop"), ".3f"),
                _fmt(v["train_gflop"], ".3f"),
            ]
            for k, v in flops.items()
        ]
        parts += [
            "",
            "## FLOPs per image (datvit.tools.flops.count_flops, 2 FLOPs per multiply-add)",
            "",
            _md_table(["model", "forward GFLOP", "fast path executes GFLOP", "train step GFLOP"], rows),
        ]
    if report.get("notes"):
        parts += ["", "## Notes", ""] + [f"* {n}" for n in report["notes"]]
    return "\n".join(parts) + "\n"


# -- chart ----------------------------------------------------------------------------------------------------------


def _bar_panel(ax, labels: list[str], values: list[float], colors: list[str], xlabel: str, title: str) -> None:
    """One horizontal bar chart, first label on top, each bar with its value."""
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.margins(x=0.2)


def bar_chart(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    groups = list(dict.fromkeys((r["mode"], r["kind"], r["batch"]) for r in results))
    panels = len(groups) + (1 if report.get("module") else 0)
    cols = min(3, max(panels, 1))
    rows_n = -(-panels // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.6 * rows_n), squeeze=False)
    colors = {"fast": "tab:blue", "reference": "tab:gray", "timm": "tab:orange"}
    for ax, (mode, kind, batch) in zip(axes.flat, groups):
        rs = [r for r in results if (r["mode"], r["kind"], r["batch"]) == (mode, kind, batch)]
        _bar_panel(
            ax,
            [r["label"] for r in rs],
            [r["images_per_s"] for r in rs],
            [colors.get(r["path"], "tab:green") for r in rs],
            "images/s (higher is better)",
            f"{kind} batch {batch} — {mode}",
        )
    i = len(groups)
    if report.get("module"):
        ax = axes.flat[i]
        t = report["module"]["timings"]
        names = [
            k
            for k in ("fast/forward", "reference/forward", "fast/forward_backward", "reference/forward_backward")
            if k in t
        ]
        _bar_panel(
            ax,
            names,
            [t[k]["ms_median"] for k in names],
            ["tab:blue" if n.startswith("fast") else "tab:gray" for n in names],
            "ms (lower is better)",
            f"DeformableAttention {report['module']['shape']}",
        )
        i += 1
    for ax in list(axes.flat)[i:]:
        ax.axis("off")
    m = report["machine"]
    fig.suptitle(
        f"datvit benchmark — {m['cpu']['model']}, {m['torch_threads']} threads, {m['device']}, torch {m['torch']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
