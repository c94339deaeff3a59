"""Export a DAT / DAT++ model out of PyTorch eager: ONNX (run by onnxruntime), ``torch.export`` (``.pt2``) and
TorchScript, each checked against the eager model after writing.

What is dynamic: the batch size, and by default the height and width too: one ONNX file or ExportedProgram serves
every image size ≥ the model's minimum (``model.min_input_size``, 32 for the four-stage models: any size, not only
multiples of 32 — the patch embedding and the downsamplings floor or ceil like eager). The size-dependent parts
are computed in the graph from the input's shape: the window padding, the shifted-window region mask and the
token orders of the L/S blocks, the neighborhood tiling of the N blocks (one tiling for every size, with k − 1
padding and the out-of-window mask), and the D blocks' reference grid and offset scale; the layers take these
branch-free formulations only while exporting with symbolic sizes (``layers/shapes.py``). The export runs under
:func:`dynamic_size_export` (torch's ``backed_size_oblivious``: without it, a stage-4 map of one pixel at the
minimum size would make every contiguity test guard on it). ``dynamic_size=False`` (``datvit export
--static-size``) fixes H×W to the export size instead: the index maths is then constants that onnxruntime folds,
and the graph is the one earlier versions wrote. The TorchScript module runs the Python control flow itself and
takes any size.

Formulations: nothing in the graph needs replacing for these exporters (measured on torch 2.14.1). The deformable
sampling and its position bias are ``grid_sample`` calls, which the ONNX exporter writes as ``GridSample``
(opset ≥ 16 for 4-D inputs; torch's exporter writes 18+, the default here is 20), and onnxruntime's CPU kernel matches PyTorch to ~1e-6.
``sampling="gather"`` (``datvit export --sampling gather``) writes both as gathers and arithmetic instead
(``layers.tracing.export_options``), for runtimes without ``GridSample`` or with a wrong one (TensorRT has
miscompiled it). ONNX files are checked in onnxruntime or OpenVINO (``runtime``; OpenVINO in float32: its CPU
plugin would otherwise run bf16 on CPUs with native bf16).
Attention goes through ``scaled_dot_product_attention`` with an additive float mask, which the exporter writes
as MatMul/Softmax. ``flex_attention`` (eager CUDA only) is switched off while tracing or scripting
(``layers/tracing.py``). In a static-size graph the size-dependent index maths runs at export time and lands in
the graph as constants; in the default dynamic-size graph it is a few small integer ops on the input's shape.
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
from ..runtime import preserve_signal_stack
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


def image_size(img_size: Optional[Sequence[int]], default: int, minimum: int) -> tuple[int, int]:
    """(H, W) from ``--img-size`` (H, or H W; empty: ``default`` square); ValueError for more than two numbers or
    a size below ``minimum`` (the model downsamples by it)."""
    if img_size is None or len(img_size) == 0:
        h = w = int(default)
    elif len(img_size) == 1:
        h = w = int(img_size[0])
    elif len(img_size) == 2:
        h, w = int(img_size[0]), int(img_size[1])
    else:
        raise ValueError(f"--img-size takes H or H W, got {len(img_size)} numbers: {list(img_size)}")
    if h < minimum or w < minimum:
        raise ValueError(
            f"--img-size {h}×{w} is below this model's minimum input of {minimum}×{minimum} "
            f"(it downsamples by {minimum})"
        )
    return h, w


def resolve_input_size(model: nn.Module, img_size: Optional[Sequence[int]] = None) -> tuple[int, int, int]:
    """(C, H, W) to export at: ``img_size`` (H, or H W) or the model's own ``img_size``; ValueError when it is
    below the model's minimum (``model.min_input_size``) or not positive."""
    native = getattr(model, "img_size", 224)
    native = int(native[0] if isinstance(native, (tuple, list)) else native)
    h, w = image_size(img_size, native, max(int(getattr(model, "min_input_size", 1)), 1))
    return int(getattr(model, "in_chans", 3)), h, w


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


def dynamic_shapes(model: nn.Module, dynamic_batch: bool = True, dynamic_size: bool = True):
    """``dynamic_shapes`` for ``torch.export.export`` / ``torch.onnx.export`` of an image batch B×C×H×W: the
    batch (``Dim("batch", min=1)``) and H, W (``Dim("height"/"width", min=min_input_size(model))``) as asked;
    None when nothing is dynamic. ``model`` is a DAT or a model containing one (a segmenter). A DAT built with
    ``strict_img_size=True`` takes one size: H and W stay fixed. Export under :func:`dynamic_size_export` when H
    or W is dynamic."""
    dims = {0: _batch_dim()} if dynamic_batch else {}
    if dynamic_size and not _strict_img_size(model):
        minimum = min_input_size(model)
        dims[2] = torch.export.Dim("height", min=minimum)
        dims[3] = torch.export.Dim("width", min=minimum)
    return (dims,) if dims else None


def min_input_size(model: nn.Module) -> int:
    """The smallest input side ``model`` takes: its ``min_input_size`` (DAT's: patch × 2^(stages − 1)), or the
    largest among its submodules' (a detector or segmenter around a DAT backbone); 1 when none says."""
    own = getattr(model, "min_input_size", None)
    if own is not None:
        return int(own)
    sizes = [int(m.min_input_size) for m in model.modules() if isinstance(getattr(m, "min_input_size", None), int)]
    return max(sizes, default=1)


def _strict_img_size(model: nn.Module) -> bool:
    return any(getattr(m, "strict_img_size", False) is True for m in model.modules())


@contextlib.contextmanager
def dynamic_size_export():
    """The setting a dynamic-size export of DAT needs around ``torch.export.export`` / ``torch.onnx.export``
    (``export_onnx`` and ``export_torch`` use it; so can exports of models that contain DAT, e.g. a segmenter):
    torch's ``backed_size_oblivious``. At the minimum input size the stage-4 map is one pixel, and torch's
    tracing asks of every tensor whether its sizes are 1 (contiguity, the stride order of a convolution's
    output, broadcasting); with backed sizes each such question becomes a guard that raises the exported
    minimum (to 2× the model's, "Constraints violated (height, width)"). Size-oblivious reasoning answers them
    for sizes ≥ 2 without a guard; the layers write the few places where the answer matters so that it holds
    for size 1 too (``layers/shapes.py``), and the tests run the graphs at the minimum size."""
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        yield


def export_sizes(model: nn.Module, input_size: Sequence[int], dynamic_size: bool = True) -> list[tuple[int, ...]]:
    """The input sizes (C, H, W) a check runs an export at: the export size and, for a dynamic-size graph, a
    non-square size and one that is not a multiple of 32 — for a 224 export with a minimum of m = 32:
    224×224, 192×256 (H − m, W + m) and 200×232 (H − 3m/4, W + m/4); sizes that would fall below the minimum
    are taken above the export size instead."""
    c, h, w = (int(v) for v in input_size)
    if not dynamic_size or _strict_img_size(model):
        return [(c, h, w)]
    m = min_input_size(model)
    quarter = max(m // 4, 1)
    non_square = (h - m if h - m >= m else h + m, w + m)
    odd = (h - 3 * quarter if h - 3 * quarter >= m else h + quarter, w + quarter)
    sizes = [(c, h, w)]
    for hh, ww in (non_square, odd):
        if (c, hh, ww) not in sizes:
            sizes.append((c, hh, ww))
    return sizes


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
    dynamic_size: bool = True,
) -> str:
    """Export ``model`` (put in eval mode) to ONNX with torch's dynamo exporter; input ``image`` (B×C×H×W,
    float32, B dynamic unless ``dynamic_batch=False``, H and W dynamic from the model's minimum unless
    ``dynamic_size=False``: then fixed to ``input_size``), output ``logits``. ``sampling``: the D blocks'
    bilinear reads as ONNX ``GridSample`` (``"grid-sample"``) or as gathers and arithmetic (``"gather"``, no
    ``GridSample`` in the graph). The file's metadata records the minimum input size
    (``datvit.min_input_size``), which ``load_exported`` checks inputs against. Returns the path written."""
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
    dynamic = dynamic_shapes(model, dynamic_batch, dynamic_size)
    try:
        with _quiet(), torch.no_grad(), export_options(sampling=sampling), dynamic_size_export():
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
    _record_input_sizes(program, model, input_size, dynamic is not None and 2 in dynamic[0])
    return _save_atomically(path, lambda p: program.save(p, external_data=False), ".onnx")


def _record_input_sizes(program, model: nn.Module, input_size: Sequence[int], dynamic_size: bool) -> None:
    """Metadata of the ONNX file: the minimum input side (``datvit.min_input_size``) and the export size."""
    props = program.model.metadata_props
    props["datvit.min_input_size"] = str(min_input_size(model))
    props["datvit.export_size"] = "x".join(str(int(v)) for v in input_size[-2:])
    props["datvit.dynamic_size"] = "true" if dynamic_size else "false"


def export_torch(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    dynamic_batch: bool = True,
    sampling: str = DEFAULT_SAMPLING,
    dynamic_size: bool = True,
) -> str:
    """``torch.export.export`` of ``model`` (eval mode) saved as a ``.pt2`` ExportedProgram (load it with
    ``torch.export.load(path).module()``). Batch dynamic unless ``dynamic_batch=False``, H and W dynamic (≥ the
    model's minimum; the loaded module raises for smaller inputs) unless ``dynamic_size=False``; ``sampling``
    as for ``export_onnx`` (``grid_sampler_2d`` or gathers in the program)."""
    _check_sampling(sampling)
    model.eval()
    x = example_batch(input_size)
    dynamic = dynamic_shapes(model, dynamic_batch, dynamic_size)
    try:
        with _quiet(), torch.no_grad(), export_options(sampling=sampling), dynamic_size_export():
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
    dynamic_size: bool = True,
) -> str:
    """Dispatch on ``fmt`` (one of ``FORMATS``). ``sampling`` and ``dynamic_size`` apply to the recorded graphs
    (ONNX, torch.export); TorchScript runs the eager kernels, at any size, and takes the default sampling only."""
    if fmt == "onnx":
        return export_onnx(model, path, input_size, dynamic_batch, opset, sampling, dynamic_size)
    if fmt == "torch-export":
        return export_torch(model, path, input_size, dynamic_batch, sampling, dynamic_size)
    if fmt == "torchscript":
        if sampling != DEFAULT_SAMPLING:
            raise ValueError(
                "--sampling applies to the onnx and torch-export formats; TorchScript runs the eager kernels"
            )
        return export_torchscript(model, path, input_size)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def compile_openvino(path: str | os.PathLike, config: dict, input_shape: Optional[Sequence] = None):
    """The ONNX file at ``path`` compiled by OpenVINO for its CPU plugin with ``config`` (e.g.
    ``INFERENCE_PRECISION_HINT=f32``: the plugin runs bf16 by default on CPUs with native bf16), reshaped first to
    ``input_shape`` where given (dimensions left None stay as exported).

    Compiled under :func:`datvit.runtime.preserve_signal_stack`: OpenVINO replaces the calling thread's alternate
    signal stack and may free it from another thread later, which crashed whole processes (SIGSEGV at the next
    SIGCHLD) once their compiled models were garbage-collected."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError(
            "running an ONNX file in OpenVINO needs the openvino package, which is not installed: "
            "pip install 'datvit[export]' (or check in onnxruntime)"
        ) from None
    with preserve_signal_stack():
        core = ov.Core()
        model = core.read_model(os.fspath(path))
        if input_shape is not None:
            shape = model.input(0).get_partial_shape()
            for i, n in enumerate(input_shape):
                if n is not None:
                    shape[i] = int(n)
            model.reshape({model.input(0): shape})
        return core.compile_model(model, "CPU", config)


def _openvino_runner(path: str, threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image batch → logits through OpenVINO's CPU plugin, compiled from the ONNX file in float32 (the plugin
    defaults to bf16 on CPUs with native bf16)."""
    config: dict = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = compile_openvino(path, config)
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
        minimum = int(session.get_modelmeta().custom_metadata_map.get("datvit.min_input_size", 0))

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            _check_min_size(x, minimum)
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


def _check_min_size(x: torch.Tensor, minimum: int) -> None:
    """ValueError for an input below the minimum side an ONNX file records (a dynamic-size graph would run on it
    and return numbers of no meaning, or fail deep inside the runtime)."""
    h, w = x.shape[-2:]
    if h < minimum or w < minimum:
        raise ValueError(
            f"input {h}×{w} is too small for this exported model: height and width must be at least {minimum}"
        )


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
    return _compare(load_exported(path, fmt, runtime), path, fmt, model, input_size, batch, seed, runtime)


def check_export_sizes(
    path: str | os.PathLike,
    fmt: str,
    model: nn.Module,
    sizes: Sequence[Sequence[int]],
    batch: int = 2,
    seed: int = 1,
    runtime: str = "onnxruntime",
) -> list[ExportCheck]:
    """``check_export`` at each of ``sizes`` ((C, H, W), e.g. ``export_sizes``) from one loaded file."""
    run = load_exported(path, fmt, runtime)
    return [_compare(run, path, fmt, model, size, batch, seed, runtime) for size in sizes]


def _compare(
    run: Callable[[torch.Tensor], torch.Tensor],
    path: str | os.PathLike,
    fmt: str,
    model: nn.Module,
    input_size: Sequence[int],
    batch: int,
    seed: int,
    runtime: str,
) -> ExportCheck:
    x = example_batch(input_size, batch, seed)
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
