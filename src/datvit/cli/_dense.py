"""The shared shape of ``datvit det`` and ``datvit seg``: a subcommand with train / eval / predict below it, and
their arguments — timm's names where the classification trainer has them, torchvision/mmdet/mmseg words for what
only dense tasks have, the recipes of the authors' dense configs as defaults.

Training flags default to "not given" (``argparse.SUPPRESS``): the task's recipe
(``datvit.dense.run_config``: the authors' Mask R-CNN 1× and UperNet 160k settings) < a YAML config given with
``-c`` (the shipped ones are named after the authors' configs, e.g. ``mask_rcnn_datpp_tiny_1x.yaml``) < flags, laid
over each other once by ``datvit.train.resolve``.

The parsers are built for every ``datvit`` call: they read the detector and segmenter kinds from
``datvit.dense.config`` (little on top of the torch, torchvision and timm that ``datvit`` loads anyway); tasks and
commands are imported only by the action that runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..dense.config import DETECTOR_KINDS, SEGMENTER_KINDS
from ..train.config import default_workers
from ._errors import run_with_user_errors
from ._run_args import (
    UpdateKwargs,
    add_config_argument,
    add_engine_arguments,
    add_evaluation_output_arguments,
    add_workers_argument,
    config_from_args,
    settings_layers,
    show_defaults,
)


def build_train_parser(p: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """Every ``datvit det train`` / ``datvit seg train`` argument, on ``p`` (flags not given leave no attribute)."""
    det = task == "detection"
    add_config_argument(
        p,
        "YAML file of settings (keys are the flag names); flags override it. A name without a "
        "path (e.g. mask_rcnn_datpp_tiny_1x.yaml) is looked up among datvit's configs",
    )
    g = p.add_argument_group("dataset")
    if det:
        g.add_argument(
            "--data-dir",
            metavar="DIR",
            help="COCO-style directory: DIR/<split>/ images and DIR/annotations/instances_<split>.json",
        )
    else:
        g.add_argument(
            "--data-dir",
            metavar="DIR",
            help="ADE20K-style directory: DIR/images/<split>/*.jpg and DIR/annotations/<split>/*.png "
            "(index masks, 255 = ignore)",
        )
    g.add_argument("--train-split", help="training split (COCO: train2017; ADE20K: training)")
    g.add_argument("--val-split", help="evaluation split (COCO: val2017; ADE20K: validation)")
    g.add_argument("--num-classes", type=int, help="number of classes (default: the dataset's)")
    if det:
        g.add_argument(
            "--img-size",
            type=int,
            help="short side the detector resizes images to (torchvision min_size; default: the preset's, "
            "800 for the COCO configs)",
        )
        g.add_argument("--max-size", type=int, help="long-side limit (torchvision max_size; 1333)")
    else:
        g.add_argument("--crop-size", type=int, help="training crop (512 for ADE20K)")
        g.add_argument(
            "--img-scale",
            type=int,
            nargs=2,
            metavar=("LONG", "SHORT"),
            help="images are rescaled to fit LONG×SHORT (training: times a random ratio, "
            "--aug-kwargs ratio_range='[0.5,2.0]'; evaluation: as is); ADE20K: 2048 512",
        )
        g.add_argument(
            "--reduce-zero-label",
            action=argparse.BooleanOptionalAction,
            help="label 0 is 'other' and ignored; classes shift down by one (ADE20K needs it)",
        )
        g.add_argument(
            "--eval-mode",
            choices=("whole", "slide"),
            help="evaluation on whole images padded to /32 (the authors' ADE20K test) or sliding "
            "windows of --crop-size",
        )
        g.add_argument("--eval-stride", type=int, help="sliding-window stride (default 2/3 crop)")
    g.add_argument(
        "--aug-kwargs",
        nargs="*",
        action=UpdateKwargs,
        metavar="KEY=VALUE",
        help=f"arguments of datvit.dense.{'detection' if det else 'segmentation'}_transforms(train=True) "
        "(resize ratio range, flip, ...)",
    )
    add_workers_argument(g)
    g.add_argument("--pin-mem", action="store_true", help="pin CPU memory of batches (GPU training)")

    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        help="a datvit.dense.DENSE_PRESETS name (the authors' settings, e.g. "
        f"{'mask_rcnn_datpp_tiny_1x' if det else 'upernet_datpp_tiny_160k'}); flags override it",
    )
    kinds = DETECTOR_KINDS if det else SEGMENTER_KINDS
    g.add_argument("--detector" if det else "--segmenter", choices=kinds, help="the head (default: the preset's)")
    g.add_argument(
        "--model",
        help="backbone: any DAT/DAT++ variant (datpp_tiny, dat_tiny, ...) or a timm CNN (resnet18, "
        "convnext_atto) for comparisons",
    )
    g.add_argument(
        "--model-kwargs",
        nargs="*",
        action=UpdateKwargs,
        metavar="KEY=VALUE",
        help="backbone constructor arguments, e.g. dims='[32,64,128,256]'",
    )
    g.add_argument(
        "--head-kwargs",
        nargs="*",
        action=UpdateKwargs,
        metavar="KEY=VALUE",
        help=f"other {'DetectorConfig' if det else 'SegmenterConfig'} fields, e.g. "
        + ("fpn_channels=128 rpn_post_nms_top_n_train=300" if det else "decoder_channels=256 aux_head=false"),
    )
    g.add_argument("--drop-path", type=float, help="backbone stochastic depth (default: the preset's)")
    g.add_argument("--out-indices", type=int, nargs="+", help="backbone stages fed to the neck")
    g.add_argument("--frozen-stages", type=int, help="freeze the stem and stages up to this index")
    g.add_argument(
        "--backbone-weights",
        metavar="FILE",
        help="classification checkpoint (datvit's or the authors') or the authors' dense checkpoint "
        "(mmdet/mmseg layout); only the backbone is taken, strictly",
    )
    add_engine_arguments(p)
    return p


def _add_sliding_arguments(p: argparse.ArgumentParser, mode_help: str) -> None:
    """The evaluation mode of a segmenter, under the names ``datvit seg train`` gives them (``--mode``, ``--crop``
    and ``--stride`` are accepted too, as aliases)."""
    p.add_argument(
        "--eval-mode", "--mode", dest="eval_mode", default="whole", choices=("whole", "slide"), help=mode_help
    )
    p.add_argument(
        "--crop-size",
        "--crop",
        dest="crop_size",
        type=int,
        default=None,
        help="sliding-window size (default: the training crop)",
    )
    p.add_argument(
        "--eval-stride",
        "--stride",
        dest="eval_stride",
        type=int,
        default=None,
        help="sliding-window stride (default 2/3 crop)",
    )


def build_eval_parser(p: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    det = task == "detection"
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a datvit det/seg training checkpoint")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="dataset directory (default: the run's)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's --val-split)")
    p.add_argument("-b", "--batch-size", type=int, default=2, help="images per batch")
    if not det:
        _add_sliding_arguments(p, "whole images padded to /32 (the authors' ADE20K test) or sliding windows")
        p.add_argument(
            "--reduce-zero-label",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="default: as the run was trained",
        )
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    add_workers_argument(p, default_workers())
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="mixed precision (GPU)")
    p.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    add_evaluation_output_arguments(p)
    return p


def build_predict_parser(p: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    det = task == "detection"
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help=f"a datvit {'det' if det else 'seg'} training checkpoint, or with --runtime a file written by "
        f"`datvit {'det' if det else 'seg'} export`",
    )
    runtimes = ("torch", "onnx", "torchscript") if det else ("torch", "onnx")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=runtimes,
        help="torch: the checkpoint in PyTorch eager; onnx: an exported ONNX file in onnxruntime (CPU)"
        + ("; torchscript: an exported TorchScript file" if det else "")
        + " (default torch)",
    )
    p.add_argument(
        "--output",
        default="output/predict",
        metavar="DIR",
        help="where the PNGs (predictions drawn over each image) go",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the predictions as JSON ('-' for stdout): "
        + ("boxes [x1,y1,x2,y2], labels, scores" if det else "per-class pixel counts"),
    )
    if det:
        p.add_argument("--score-thresh", type=float, default=0.5, help="draw/report detections above this score")
    else:
        _add_sliding_arguments(p, "whole image or sliding windows")
    p.add_argument("--use-ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# The same as datvit.dense.export's (tests hold them equal); repeated so that the parsers import no exporter.
DETECTOR_EXPORT_FORMATS = ("torchscript", "onnx", "torch-export")
SEGMENTER_EXPORT_FORMATS = ("onnx",)


def build_export_parser(p: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    det = task == "detection"
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a datvit det/seg training checkpoint")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="file to write (replaced atomically)")
    if det:
        p.add_argument(
            "--format",
            required=True,
            choices=DETECTOR_EXPORT_FORMATS,
            help="torchscript (the whole detector, any image size; bit-identical to eager), onnx (one image "
            "3×H×W in 0..1 per run, H and W dynamic; DAT v1 backbones), torch-export (fails: torchvision's "
            "post-processing has data-dependent shapes; the error says where)",
        )
        p.add_argument(
            "--onnx-exporter",
            default="legacy",
            choices=("legacy", "dynamo"),
            help="torch's TorchScript-based exporter (legacy, what torchvision supports) or the dynamo exporter "
            "(fails as torch-export does)",
        )
        p.add_argument(
            "--img-size",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help="example image H [W] the ONNX exporter traces and the check uses (its size stays dynamic; "
            "default: the detector's test size, 4:3)",
        )
    else:
        p.add_argument("--format", default="onnx", choices=SEGMENTER_EXPORT_FORMATS, help="onnx (the only one)")
        p.add_argument(
            "--img-size",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help="H [W] to trace and check at (default: the training crop); the graph takes any H×W ≥ the "
            "model's minimum (padded to /32 inside the graph and cropped back) unless --static-size",
        )
        p.add_argument(
            "--static-size",
            action="store_true",
            help="fix the graph's H×W to --img-size (as datvit export --static-size; predict then runs larger "
            "images in windows of that size); the default is dynamic wherever the DAT backbone exports a "
            "symbolic size",
        )
        p.add_argument(
            "--sampling",
            default=None,
            choices=("grid-sample", "gather"),
            help="the deformable sampling as ONNX GridSample (the default) or as gathers and arithmetic, for "
            "runtimes without a (correct) GridSample, as `datvit export --sampling`",
        )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17 legacy exporter, 20 dynamo)")
    p.add_argument("--use-ema", action="store_true", help="export the checkpoint's EMA weights")
    p.add_argument("--no-check", action="store_true", help="do not run the exported file against eager")
    return p


def register_dense(subparsers: argparse._SubParsersAction, command: str, task: str, doc: str, epilog: str) -> None:
    """Add ``datvit <command>`` with its train / eval / predict actions."""
    what = "a detector" if task == "detection" else "a segmenter"
    p = subparsers.add_parser(
        command,
        help=f"train, evaluate or run {what} with a DAT backbone",
        description=doc,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="<action>")
    train = sub.add_parser(
        "train",
        help=f"train {what} (torchrun for DDP)",
        epilog=epilog,
        description=f"datvit {command} train: train {what} with a DAT backbone.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    evaluate = sub.add_parser(
        "eval",
        help="metrics of a checkpoint on a dataset split",
        epilog=epilog,
        description=f"datvit {command} eval: metrics of a checkpoint on a dataset split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict = sub.add_parser(
        "predict",
        help="draw predictions over images (PNG) and write them as JSON",
        description=f"datvit {command} predict: predictions drawn over images.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_train_parser(train, task)
    from ..dense import run_config

    if task == "detection":
        show_defaults(train, run_config.DetectionTrainConfig, run_config.DETECTION_RECIPE)
    else:
        show_defaults(train, run_config.SegmentationTrainConfig, run_config.SEGMENTATION_RECIPE)
    export = sub.add_parser(
        "export",
        help="write a checkpoint as " + ("TorchScript or ONNX" if task == "detection" else "ONNX") + " and check it",
        description=f"datvit {command} export: a checkpoint as a deployable file, checked against eager. "
        + _EXPORT_DOC[task],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_eval_parser(evaluate, task)
    build_predict_parser(predict, task)
    build_export_parser(export, task)
    train.set_defaults(func=lambda args: run_with_user_errors(f"{command} train", lambda: _train(args, task, train)))
    evaluate.set_defaults(func=lambda args: run_with_user_errors(f"{command} eval", lambda: _eval(args, task)))
    predict.set_defaults(func=lambda args: _predict(args, task, command))
    export.set_defaults(
        func=lambda args: run_with_user_errors(f"{command} export", lambda: _export(args, task, command))
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


_EXPORT_DOC = {
    "detection": "torchscript: torch.jit.script of the whole detector; onnx: torch's TorchScript-based exporter "
    "(dynamic H×W; DAT++ backbones stop it); torch-export and --onnx-exporter dynamo: tried, they fail on "
    "torchvision's data-dependent post-processing and say so. The check: random images of two sizes (one "
    "non-square, odd sides), the same boxes within 0.01 px and scores within 1e-4. Run a file with "
    "`datvit det predict --runtime`.",
    "segmentation": "ONNX of the whole-image segmentation (input B×3×H×W normalised, output B×K×H×W logits), "
    "dynamic batch. The check: logits within 1e-3 and argmax equal on ≥ 99.9% of pixels at the export size, and "
    "at a second, non-square size with odd sides when H×W is dynamic. Run it with `datvit seg predict "
    "--runtime onnx`.",
}


def _export(args: argparse.Namespace, task: str, command: str) -> int:
    """``run_export`` with an export or check failure as one line and exit status 1 (a runtime failure)."""
    from ..dense.commands import DenseExportConfig, run_export
    from ..tools.export import ExportError
    from ._errors import RUNTIME_FAILURE, debug_enabled, missing_optional_module

    try:
        run_export(config_from_args(DenseExportConfig, args, check=not args.no_check), task)
    except ExportError as e:
        if debug_enabled() or missing_optional_module(e):  # a missing extra: run_with_user_errors names it
            raise
        print(f"datvit {command} export: error: {e}", file=sys.stderr)
        return RUNTIME_FAILURE
    return 0


def _train(args: argparse.Namespace, task: str, parser: argparse.ArgumentParser) -> Any:
    from ..dense.tasks import DetectionTask, SegmentationTask
    from ..train.engine import train

    runner = DetectionTask() if task == "detection" else SegmentationTask()
    return train(settings_layers(parser, args, runner.run_config_cls), runner)


def _eval(args: argparse.Namespace, task: str) -> Any:
    from ..dense.commands import DenseEvalConfig, run_eval

    return run_eval(config_from_args(DenseEvalConfig, args), task)


def _predict(args: argparse.Namespace, task: str, command: str) -> int:
    from ..dense.commands import DensePredictConfig, run_predict

    box: dict[str, int] = {}
    code = run_with_user_errors(
        f"{command} predict",
        lambda: box.setdefault("code", run_predict(config_from_args(DensePredictConfig, args), task)),
    )
    return code or box.get("code", 0)
