"""Export a DAT / DAT++ model out of PyTorch eager: ONNX (run by onnxruntime), ``torch.export`` (``.pt2``) and
TorchScript, each checked against the eager model after writing.

What is dynamic: the batch size, in all three formats. The spatial size is fixed at export time for ONNX and
``torch.export`` (the window padding, the shifted-window region mask and the neighborhood tiling depend on H and W,
and ``torch.export`` refuses a symbolic H/W for them: "Constraints violated (h, w)"), so another image size is
another export; the TorchScript module runs the Python control flow itself and takes any size.

Formulations: nothing in the graph needs replacing for these exporters (measured on torch 2.14.1). The deformable
sampling and its position bias are ``grid_sample`` calls, which the ONNX exporter writes as ``GridSample``
(opset ≥ 16 for 4-D inputs; torch's exporter writes 18+, the default here is 20), and onnxruntime's CPU kernel matches PyTorch to ~1e-6.
``sampling="gather"`` (``datvit export --sampling gather``) writes both as gathers and arithmetic instead
(``layers.tracing.export_options``), for runtimes without ``GridSample`` or with a wrong one (TensorRT has
miscompiled it). ONNX files are checked in onnxruntime or OpenVINO (``runtime``; OpenVINO in float32: its CPU
plugin would otherwise run bf16 on CPUs with native bf16).
Attention goes through ``scaled_dot_product_attention`` with an additive float mask, which the exporter writes
as MatMul/Softmax. ``flex_attention`` (eager CUDA only) is switched off while tracing or scripting
(``layers/tracing.py``), and the size-dependent index maths runs at export time and lands in the graph as
constants.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..layers.tracing import DEFAULT_SAMPLING, SAMPLINGS, export_options
from ..utils.files import atomic_link

FORMATS = ("onnx", "torch-export", "torchscript")
# what runs an ONNX file in load_exported / check_export
RUNTIMES = ("onnxruntime", "openvino")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2", "torchscript": ".pt"}
# ONNX opset: GridSample exists from opset 16 (4-D inputs, which is what DAT samples), but torch's dynamo
# exporter writes opset 18 natively and cannot convert its graph down (onnx's converter has no Pad adapter to 17).
DEFAULT_OPSET = 20
MIN_OPSET = 18


class ExportError(RuntimeError):
    """An export or its check failed for a reason the user cannot fix by changing arguments (exit code 1)."""


@dataclass(frozen=True)
class ExportCheck:
    """The result of running an exported file against the eager model on the same random batch."""

    format: str
    path: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    output_max_abs: float


def resolve_input_size(model: nn.Module, img_size: Optional[Sequence[int]] = None) -> tuple[int, int, int]:
    """(C, H, W) to export at: ``img_size`` (H, or H W) or the model's own ``img_size``; ValueError when it is
    below the model's minimum (``model.min_input_size``) or not positive."""
    in_chans = int(getattr(model, "in_chans", 3))
    if img_size is None or len(img_size) == 0:
        native = getattr(model, "img_size", 224)
        h = w = int(native[0] if isinstance(native, (tuple, list)) else native)
    elif len(img_size) == 1:
        h = w = int(img_size[0])
    elif len(img_size) == 2:
        h, w = int(img_size[0]), int(img_size[1])
    else:
        raise ValueError(f"--img-size takes H or H W, got {len(img_size)} numbers: {list(img_size)}")
    minimum = int(getattr(model, "min_input_size", 1))
    if h < minimum or w < minimum:
        raise ValueError(
            f"--img-size {h}×{w} is below this model's minimum input of {minimum}×{minimum} "
            f"(it downsamples by {minimum})"
        )
    return in_chans, h, w


def example_batch(input_size: Sequence[int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A reproducible random float32 image batch B×C×H×W (normal, like normalised images)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size, generator=g)


def _save_atomically(path: str | os.PathLike, save: Callable[[str], None], suffix: str) -> str:
    """Let ``save`` write a file in a temporary directory beside ``path``, then move it over ``path`` atomically
    (``utils.files.atomic_link``): a failed export leaves any earlier file at ``path`` untouched. The staged file
    is named with ``suffix`` (``torch.export.save`` insists on ``.pt2``), whatever ``path`` is called."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".datvit-export-", dir=directory) as tmp:
        staged = os.path.join(tmp, "model" + suffix)
        save(staged)
        atomic_link(staged, path)
    return path


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and their deprecation/tracing warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _batch_dim():
    return torch.export.Dim("batch", min=1)


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"--sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    sampling: str = DEFAULT_SAMPLING,
) -> str:
    """Export ``model`` (put in eval mode) to ONNX with torch's dynamo exporter; input ``image`` (B×C×H×W,
    float32, B dynamic unless ``dynamic_batch=False``), output ``logits``. ``sampling``: the D blocks' bilinear
    reads as ONNX ``GridSample`` (``"grid-sample"``) or as gathers and arithmetic (``"gather"``, no
    ``GridSample`` in the graph). Returns the path written."""
    _check_sampling(sampling)
    if opset < MIN_OPSET:
        raise ValueError(
            f"--opset {opset} is too old: torch's ONNX exporter writes opset {MIN_OPSET} or newer "
            f"(DAT's deformable sampling needs GridSample, opset 16+, in any case)"
        )
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages ({e}); install them with: pip install 'datvit[export]'"
        ) from None
    model.eval()
    x = example_batch(input_size)
    dynamic = ({0: _batch_dim()},) if dynamic_batch else None
    try:
        with _quiet(), torch.no_grad(), export_options(sampling=sampling):
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=dynamic,
                optimize=True,
                external_data=False,
            )
    except Exception as e:  # the exporter wraps its failures in many types
        raise ExportError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from e
    return _save_atomically(path, lambda p: program.save(p, external_data=False), ".onnx")


def export_torch(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    dynamic_batch: bool = True,
    sampling: str = DEFAULT_SAMPLING,
) -> str:
    """``torch.export.export`` of ``model`` (eval mode) saved as a ``.pt2`` ExportedProgram (load it with
    ``torch.export.load(path).module()``). Batch dynamic unless ``dynamic_batch=False``; ``sampling`` as for
    ``export_onnx`` (``grid_sampler_2d`` or gathers in the program)."""
    _check_sampling(sampling)
    model.eval()
    x = example_batch(input_size)
    dynamic = ({0: _batch_dim()},) if dynamic_batch else None
    try:
        with _quiet(), torch.no_grad(), export_options(sampling=sampling):
            program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    except Exception as e:
        raise ExportError(f"torch.export failed: {str(e).strip().splitlines()[0]}") from e
    return _save_atomically(path, lambda p: torch.export.save(program, p), ".pt2")


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: Optional[Sequence[int]] = None) -> str:
    """``torch.jit.script`` of ``model`` (eval mode) saved with ``torch.jit.save``. Scripting keeps the Python
    control flow, so the file takes any batch and image size; ``input_size`` is only used by the check."""
    model.eval()
    try:
        with _quiet():
            scripted = torch.jit.script(model)
    except Exception as e:
        raise ExportError(f"torch.jit.script failed: {str(e).strip().splitlines()[0]}") from e
    return _save_atomically(path, lambda p: torch.jit.save(scripted, p), ".pt")


def export_model(
    model: nn.Module,
    fmt: str,
    path: str | os.PathLike,
    input_size: Sequence[int],
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    sampling: str = DEFAULT_SAMPLING,
) -> str:
    """Dispatch on ``fmt`` (one of ``FORMATS``). ``sampling`` applies to the recorded graphs (ONNX,
    torch.export); TorchScript runs the eager kernels and takes the default only."""
    if fmt == "onnx":
        return export_onnx(model, path, input_size, dynamic_batch, opset, sampling)
    if fmt == "torch-export":
        return export_torch(model, path, input_size, dynamic_batch, sampling)
    if fmt == "torchscript":
        if sampling != DEFAULT_SAMPLING:
            raise ValueError(
                "--sampling applies to the onnx and torch-export formats; TorchScript runs the eager kernels"
            )
        return export_torchscript(model, path, input_size)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _openvino_runner(path: str, threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image batch → logits through OpenVINO's CPU plugin, compiled from the ONNX file in float32 (the plugin
    defaults to bf16 on CPUs with native bf16)."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError(
            "running an ONNX file in OpenVINO needs the openvino package, which is not installed: "
            "pip install 'datvit[export]' (or check in onnxruntime)"
        ) from None
    config: dict = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    output = compiled.output(0)

    def run_openvino(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(x.detach().cpu().numpy())[output].copy())

    return run_openvino


def load_exported(
    path: str | os.PathLike, fmt: str, runtime: str = "onnxruntime"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function image batch → logits that runs the exported file: ONNX in ``runtime`` on CPU
    (``"onnxruntime"`` or ``"openvino"``, float32), the others in PyTorch."""
    path = os.fspath(path)
    if fmt == "onnx" and runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if fmt == "onnx" and runtime == "openvino":
        return _openvino_runner(path)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(
                "checking an ONNX file needs onnxruntime, which is not installed: "
                "pip install onnxruntime (or pass --no-check)"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

        return run_onnx
    if fmt == "torch-export":
        with open(path, "rb") as f:  # a buffer: torch.export.load wants a .pt2 name otherwise
            module = torch.export.load(io.BytesIO(f.read())).module()
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            module = torch.jit.load(path, map_location="cpu").eval()
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run_torch


def check_export(
    path: str | os.PathLike,
    fmt: str,
    model: nn.Module,
    input_size: Sequence[int],
    batch: int = 2,
    seed: int = 1,
    runtime: str = "onnxruntime",
) -> ExportCheck:
    """Run the exported file (ONNX in ``runtime``) and the eager model on the same random batch; return max |Δ|
    of the logits."""
    x = example_batch(input_size, batch, seed)
    run = load_exported(path, fmt, runtime)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    try:
        actual = run(x)
    except Exception as e:
        raise ExportError(
            f"running the exported {fmt} file {os.fspath(path)}{' in ' + runtime if fmt == 'onnx' else ''} failed: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from e
    if tuple(actual.shape) != tuple(expected.shape):
        raise ExportError(f"the exported {fmt} file returns shape {tuple(actual.shape)}, eager {tuple(expected.shape)}")
    diff = (actual.float() - expected.float()).abs().max().item()
    return ExportCheck(fmt, os.fspath(path), tuple(x.shape), diff, expected.abs().max().item())


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds) of one call; for the CLI's progress lines and datvit.tools.benchmark.export_all."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
