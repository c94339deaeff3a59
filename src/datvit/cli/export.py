"""``datvit export``: write a DAT / DAT++ checkpoint as ONNX, a ``torch.export`` program (.pt2) or TorchScript.

The model is loaded by the inference layer like every other command (a datvit checkpoint or a safetensors +
config.json directory records its architecture; the authors' .pth needs --model), exported on CPU in float32
with a dynamic batch, height and width, written atomically, then checked: the file is run (onnxruntime or OpenVINO on CPU,
the loaded ExportedProgram, the loaded ScriptModule) against the eager model on random batches of 2 and the largest
logit difference is printed. One file serves every image size: ONNX and torch.export graphs take any height and
width from the model's minimum (32 for the four-stage models; any size, not only multiples of 32), and are
checked at three sizes from the same file (--img-size, default the checkpoint's; one non-square; one not a
multiple of 32). --static-size fixes H×W to --img-size instead (the size-dependent index maths then folds into
constants; the graph runs at that size only). TorchScript takes any size.

--sampling gather writes the deformable blocks' bilinear sampling and position bias as gathers and arithmetic
instead of ONNX GridSample (equal to the default graph within 1e-5): for runtimes that lack GridSample or get it
wrong (TensorRT has miscompiled it). --check-runtime openvino checks an ONNX file in OpenVINO (CPU, float32)."""

from __future__ import annotations

import argparse
import os
import sys

from ._errors import RUNTIME_FAILURE, debug_enabled, missing_optional_module, run_with_user_errors
from ._run_args import add_trust_checkpoint_argument

EPILOG = """examples:
  datvit export --checkpoint output/train/run/best.pth --format onnx --output dat.onnx
  datvit export --model dat_tiny --checkpoint dat_tiny_in1k_224.pth --format torch-export --output dat_tiny.pt2
  datvit export --model datpp_tiny --checkpoint datpp_tiny.pth --format onnx --output datpp_tiny.onnx  # any H×W
  datvit export --model dat_tiny --checkpoint dat_tiny.pth --format onnx --static-size --img-size 288 --output dat_288.onnx
  datvit export --checkpoint best.pth --format torchscript --output dat_scripted.pt
  datvit export --checkpoint best.pth --format onnx --sampling gather --check-runtime openvino --output dat.onnx
"""

# Largest accepted |exported − eager| on the check batch, relative to max(1, largest |logit|): float32 exports
# measured ≤ 3e-6 (README, Deployment), so a failure here means a wrong graph, not rounding.
CHECK_TOLERANCE = 1e-4


# The same as datvit.tools.export's (a test holds them equal); repeated so that `datvit --help` imports no torch.
FORMATS = ("onnx", "torch-export", "torchscript")
DEFAULT_OPSET = 20
SAMPLINGS = ("grid-sample", "gather")
DEFAULT_SAMPLING = "grid-sample"
RUNTIMES = ("onnxruntime", "openvino")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, torch.export (.pt2) or TorchScript and check it",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="datvit checkpoint or the authors' .pth (then give --model); without it, --model with random weights",
    )
    p.add_argument("--model", default=None, help="variant for checkpoints that do not record it, e.g. dat_tiny")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, torch-export (.pt2) or torchscript")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="file to write (replaced atomically)")
    p.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="input size H, or H W, to trace and check at (default: the checkpoint's); ONNX and torch-export "
        "files take any size ≥ the model's minimum unless --static-size",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, 18+)")
    p.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=None,
        help=f"how ONNX and torch-export graphs write the deformable sampling and position bias: grid-sample "
        f"(ONNX GridSample) or gather (gathers and arithmetic, no GridSample: for TensorRT and runtimes without "
        f"it); default {DEFAULT_SAMPLING}",
    )
    p.add_argument(
        "--check-runtime",
        choices=RUNTIMES,
        default="onnxruntime",
        help="what runs an ONNX file for the check: onnxruntime (default) or openvino (CPU, float32)",
    )
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of dynamic")
    p.add_argument(
        "--static-size",
        action="store_true",
        help="fix H×W of ONNX and torch-export graphs to --img-size instead of dynamic (the index maths of "
        "windows, masks and tiling becomes constants)",
    )
    p.add_argument("--no-check", action="store_true", help="do not run the exported file against eager")
    p.add_argument("--use-ema", action="store_true", help="export the checkpoint's EMA weights")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: from the weights)")
    add_trust_checkpoint_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("export", lambda: _export_or_report(args))


def _export_or_report(args: argparse.Namespace) -> int:
    """``export``, with an export or check failure as one line and exit status 1 (a runtime failure)."""
    from ..tools.export import ExportError

    try:
        export(args)
    except ExportError as e:
        if debug_enabled() or missing_optional_module(e):  # a missing extra: run_with_user_errors names it
            raise
        print(f"datvit export: error: {e}", file=sys.stderr)
        return RUNTIME_FAILURE
    return 0


def _check_output(path: str) -> None:
    """ValueError naming --output when the file cannot be written there (checked before the slow export)."""
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {path}: cannot create directory {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"--output {path}: directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"--output {path}: the existing file is not writable")


def _load(args: argparse.Namespace):
    """The model (eval mode, CPU) and the input size it was trained at, through the inference layer."""
    from ..inference import load_model

    if args.checkpoint is None and not args.model:
        raise ValueError(
            "give --checkpoint FILE (and --model for the authors' files), or --model alone for random weights"
        )
    if args.checkpoint is None:
        print(f"no --checkpoint: exporting {args.model} with random weights", file=sys.stderr)
    loaded = load_model(
        args.checkpoint,
        args.model,
        num_classes=args.num_classes,
        use_ema=args.use_ema,
        trust_checkpoint=args.trust_checkpoint,
    )
    return loaded.model.eval(), loaded.name, tuple(loaded.data_config["input_size"][-2:])


def export(args: argparse.Namespace) -> None:
    from ..tools.export import check_export_sizes, export_model, export_sizes, resolve_input_size, timed

    if args.format not in FORMATS:
        raise ValueError(f"--format {args.format!r} is not one of {', '.join(FORMATS)}")
    sampling = getattr(args, "sampling", None)
    if sampling is not None and args.format == "torchscript":
        raise ValueError("--sampling applies to the onnx and torch-export formats; TorchScript runs the eager kernels")
    sampling = sampling or DEFAULT_SAMPLING
    check_runtime = getattr(args, "check_runtime", "onnxruntime")
    _check_output(args.output)
    model, name, trained_size = _load(args)
    input_size = resolve_input_size(model, args.img_size or trained_size)
    c, h, w = input_size
    what = {"onnx": f"ONNX (opset {args.opset})", "torch-export": "torch.export", "torchscript": "TorchScript"}
    batch = "batch 1" if args.static_batch else "dynamic batch"
    static_size = getattr(args, "static_size", False) or bool(getattr(model, "strict_img_size", False))
    if args.format == "torchscript":
        size = "any size"
    elif static_size:
        size = f"{c}×{h}×{w}"
    else:
        m = int(getattr(model, "min_input_size", 1))
        size = f"{c}×H×W for any H, W ≥ {m} (traced at {h}×{w})"
    graph = ", GridSample-free (gather sampling)" if sampling == "gather" else ""
    print(f"exporting {name} to {what[args.format]}, {size}, {batch}{graph} ...", flush=True)
    path, seconds = timed(
        export_model,
        model,
        args.format,
        args.output,
        input_size,
        dynamic_batch=not args.static_batch,
        opset=args.opset,
        sampling=sampling,
        dynamic_size=not static_size,
    )
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {seconds:.1f} s", flush=True)
    if args.no_check:
        return
    runner = {
        "onnx": "OpenVINO (CPU, f32)" if check_runtime == "openvino" else "onnxruntime (CPU)",
        "torch-export": "the loaded ExportedProgram",
        "torchscript": "the loaded ScriptModule",
    }[args.format]
    sizes = export_sizes(model, input_size, dynamic_size=not static_size)
    checks = check_export_sizes(
        path, args.format, model, sizes, batch=1 if args.static_batch else 2, runtime=check_runtime
    )
    for check in checks:
        print(
            f"check: {runner} vs eager on a random batch {check.input_shape}: max |Δ| = {check.max_abs_diff:.3g} "
            f"(logits up to {check.output_max_abs:.3g})"
        )
    for check in checks:
        if check.max_abs_diff > CHECK_TOLERANCE * max(1.0, check.output_max_abs):
            from ..tools.export import ExportError

            raise ExportError(
                f"the exported file differs from eager by {check.max_abs_diff:.3g} (> {CHECK_TOLERANCE:g}"
                f" relative) at {check.input_shape[-2]}×{check.input_shape[-1]}: {path} was written but should "
                "not be trusted"
            )
