"""``datvit demo-dense`` (``make demo-dense``): DAT for detection and segmentation, offline, on 2 CPU cores.

1. Writes the Fashion-MNIST scenes dataset (``datvit.dense.make_fashion_scenes``: 128×128 canvases with 2–4 items,
   boxes, instance masks and semantic maps in COCO and ADE20K layouts; seeded) under ``<output>/scenes``.
2. Trains, from scratch and on one schedule each: Mask R-CNN and UperNet with a DAT-nano-style backbone (the
   shipped ``demo_mask_rcnn_scenes`` / ``demo_upernet_scenes`` configs), and the same two with a timm CNN backbone
   (default ``convnext_atto``, 3.4M parameters — the closest timm CNN to DAT-nano's 2.3M; ``--cnn resnet18`` for
   ResNet-18) — a small-scale version of the papers' backbone comparison.
3. Writes ``<output>/report.md``: box/mask mAP and mAP@50, mIoU and pixel accuracy of the final weights on the
   validation scenes (drawn from Fashion-MNIST's test images, so no item was seen in training), the side-by-side
   table, the curves, and a PNG of each model's predictions over the same validation scenes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..utils.files import atomic_write_text
from .demo import _fmt_seconds, clear_previous_runs

EPILOG = """examples:
  datvit demo-dense                                  # into demo_output/dense (sized for ~15 min on 2 idle cores; see docs/dense.md)
  datvit demo-dense --epochs 1 --n-train 400         # a quicker look
  datvit demo-dense --cnn resnet18 --data-dir DIR
"""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--output", default="demo_output/dense", help="where scenes, runs and report.md go")
    p.add_argument("--n-train", type=int, default=800, help="training scenes")
    p.add_argument("--n-val", type=int, default=200, help="validation scenes (from Fashion-MNIST's test images)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the configs', 2)")
    p.add_argument(
        "--cnn",
        default="convnext_atto",
        choices=("convnext_atto", "resnet18"),
        help="the timm CNN backbone DAT is compared with",
    )
    p.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=("det", "seg"), help="what to train")
    p.add_argument(
        "--data-dir",
        "--fashion-mnist-dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="the Fashion-MNIST IDX files (default: the Debian package dataset-fashion-mnist)",
    )
    p.add_argument("--seed", type=int, default=0, help="scene generation and training seed")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the configs')")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-dense",
        help="train/evaluate DAT and CNN detectors and segmenters on generated scenes (offline, CPU)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


RUNS = {  # name: (task command, shipped config, preset of the backbone, label)
    "det_dat": ("det", "demo_mask_rcnn_scenes", "mask_rcnn_dat_nano_scenes", "Mask R-CNN, DAT-nano"),
    "det_cnn": ("det", "demo_mask_rcnn_scenes", "mask_rcnn_{cnn}_scenes", "Mask R-CNN, {cnn}"),
    "seg_dat": ("seg", "demo_upernet_scenes", "upernet_dat_nano_scenes", "UperNet, DAT-nano"),
    "seg_cnn": ("seg", "demo_upernet_scenes", "upernet_{cnn}_scenes", "UperNet, {cnn}"),
}


def _train(name: str, args: argparse.Namespace, data: Path, runs_dir: Path) -> dict[str, Any]:
    from ._dense import _train as train_task
    from .main import build_parser

    command, config, preset, _ = RUNS[name]
    argv = [
        command,
        "train",
        "-c",
        config,
        "--preset",
        preset.format(cnn=args.cnn),
        "--data-dir",
        str(data),
        "--output",
        str(runs_dir),
        "--experiment",
        name,
        "--seed",
        str(args.seed),
        "--no-progress",
    ]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    run_args = build_parser().parse_args(argv)
    print(f"\n== {name}: datvit {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    summary = train_task(run_args, "detection" if command == "det" else "segmentation")
    summary["wall_seconds"] = time.perf_counter() - start
    summary["command"] = "datvit " + " ".join(argv)
    return summary


def _last_row(run_dir: Path) -> dict[str, Any]:
    ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    return ckpt["history"]["epochs"][-1] | {
        "images_per_s_mean": sum(r["images/s"] for r in ckpt["history"]["epochs"]) / len(ckpt["history"]["epochs"])
    }


def _prediction_panels(
    names: list[str], runs_dir: Path, data: Path, cnn: str, n_images: int = 4
) -> list[dict[str, Any]]:
    """The same validation scenes predicted by every model (detections above score 0.5; class maps)."""
    import numpy as np

    from ..dense.commands import load_dense_checkpoint
    from ..utils.images import read_image

    images = sorted((data / "val").glob("*.jpg"))[:n_images]
    panels = []
    for name in names:
        task = "detection" if name.startswith("det") else "segmentation"
        model, ckpt = load_dense_checkpoint(str(runs_dir / name / "last.pth"), task)
        class_names = list(ckpt["class_names"])
        pred_args = argparse.Namespace(score_thresh=0.5, mode="whole", crop=None, stride=None)
        from ..dense.commands import predict_image

        for path in images:
            image = read_image(path, "RGB")
            pred = predict_image(model, image, task, ckpt, pred_args, torch.device("cpu"))
            panel = {
                "image": np.asarray(image),
                "title": f"{RUNS[name][3].format(cnn=cnn)}: {path.name}",
                "class_names": class_names,
            }
            panel["detections" if task == "detection" else "classes"] = pred if task == "detection" else pred["classes"]
            panels.append(panel)
    return panels


def write_report(
    out: Path,
    names: list[str],
    args: argparse.Namespace,
    summaries: dict[str, dict[str, Any]],
    scenes: dict[str, Any],
    timings: dict[str, float],
) -> Path:
    from ..train.metrics import read_summary
    from .demo import cpu_name

    runs_dir = out / "runs"
    rows = {name: _last_row(runs_dir / name) for name in names}
    cnn = args.cnn
    label = {name: RUNS[name][3].format(cnn=cnn) for name in names}

    def pct(v: Optional[float], scale: float = 100.0) -> str:
        return "–" if v is None else f"{v * scale:.1f}"

    lines = ["# datvit dense demo: DAT vs a CNN backbone for detection and segmentation (CPU, offline)", ""]
    lines += [
        f"Fashion-MNIST scenes, {scenes['splits']['train']['scenes']} training / "
        f"{scenes['splits']['val']['scenes']} validation canvases of 128×128 with 2–4 items "
        f"({scenes['splits']['train']['instances']} / {scenes['splits']['val']['instances']} instances, 10 "
        "classes + background), generated by `datvit.dense.make_fashion_scenes` (seed "
        f"{args.seed}). Every model is trained from scratch with the same schedule; the numbers are the final "
        "weights on the validation scenes, whose items come from Fashion-MNIST's test images.",
        "",
    ]
    det = [n for n in names if n.startswith("det")]
    seg = [n for n in names if n.startswith("seg")]
    if det:
        lines += [
            "## Detection and instance segmentation (Mask R-CNN)",
            "",
            "| backbone | params | box mAP | box mAP@50 | mask mAP | mask mAP@50 | train img/s | train time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in det:
            r, s = rows[n], summaries[n]
            lines.append(
                f"| {label[n]} | {s['parameters'] / 1e6:.2f}M | {pct(r.get('eval_bbox_mAP'))} | "
                f"{pct(r.get('eval_bbox_mAP50'))} | {pct(r.get('eval_segm_mAP'))} | "
                f"{pct(r.get('eval_segm_mAP50'))} | {r['images_per_s_mean']:.2f} | "
                f"{_fmt_seconds(s['train_seconds'])} |"
            )
        lines.append("")
    if seg:
        lines += [
            "## Semantic segmentation (UperNet + auxiliary FCN head)",
            "",
            "| backbone | params | mIoU | pixel accuracy | train img/s | train time |",
            "|---|---|---|---|---|---|",
        ]
        for n in seg:
            r, s = rows[n], summaries[n]
            lines.append(
                f"| {label[n]} | {s['parameters'] / 1e6:.2f}M | {pct(r.get('eval_mIoU'), 1)} | "
                f"{pct(r.get('eval_aAcc'), 1)} | {r['images_per_s_mean']:.2f} | "
                f"{_fmt_seconds(s['train_seconds'])} |"
            )
        lines.append("")
    lines += [
        "Parameters are the whole model's (backbone, neck and heads). mAP is COCO's (IoU 0.5:0.95, "
        "pycocotools); mIoU and pixel accuracy over the 11 classes, background included.",
        "",
    ]
    lines += [
        "## Predictions on validation scenes",
        "",
        "![predictions](predictions.png)",
        "",
        "Detections above score 0.5 (boxes, classes, masks); class maps blended over the scene "
        "(background left clear).",
        "",
    ]
    lines += ["## Curves", ""]
    for n in names:
        plot = "map.png" if n.startswith("det") else "miou.png"
        lines.append(f"{label[n]}: [loss](runs/{n}/loss.png) · [metric](runs/{n}/{plot}) · [lr](runs/{n}/lr.png)")
        lines.append("")
        lines.append(f"![{label[n]} loss](runs/{n}/loss.png)")
        lines.append("")
    lines += ["## Per epoch", ""]
    for n in names:
        table = read_summary(runs_dir / n / "summary.csv")
        cols = list(table[0])
        lines += [f"**{label[n]}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in table]
        lines.append("")
    lines += [
        "## Setup",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) |",
        f"| wall time | {_fmt_seconds(timings['total'])} in all ({_fmt_seconds(timings['scenes'])} writing the "
        "scenes) |",
        "",
    ]
    lines += ["Commands:", ""] + [f"    {summaries[n]['command']}" for n in names] + [""]
    path = out / "report.md"
    atomic_write_text("\n".join(lines), path)
    return path


def run(args: argparse.Namespace) -> int:
    from ..dense import make_fashion_scenes
    from ..dense.drawing import draw_grid
    from ._errors import run_with_user_errors

    out = Path(args.output)
    data = out / "scenes"
    box: dict[str, Any] = {}

    def go() -> None:
        start = time.perf_counter()
        box["scenes"] = make_fashion_scenes(
            data,
            args.n_train,
            args.n_val,
            canvas=128,
            seed=args.seed,
            fashion_mnist_dir=args.data_dir,
            overwrite=True,
            progress=True,
        )
        box["t_scenes"] = time.perf_counter() - start
        names = [n for n in RUNS if n[:3] in args.tasks]
        clear_previous_runs(out / "runs", names)
        summaries = {n: _train(n, args, data, out / "runs") for n in names}
        draw_grid(_prediction_panels(names, out / "runs", data, args.cnn), out / "predictions.png", columns=4)
        timings = {"scenes": box["t_scenes"], "total": time.perf_counter() - start}
        box["report"] = write_report(out, names, args, summaries, box["scenes"], timings)
        atomic_write_text(
            json.dumps({n: {k: v for k, v in s.items()} for n, s in summaries.items()}, indent=2, default=str),
            out / "summaries.json",
        )
        print(f"\ndemo-dense: report {box['report']} ({_fmt_seconds(timings['total'])})")

    return run_with_user_errors("demo-dense", go)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m datvit.cli.demo_dense`` = ``datvit demo-dense``."""
    from .main import main as cli_main

    return cli_main(["demo-dense", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
