"""Detectors and segmenters out of PyTorch eager, each file checked against the eager model, and the exported files
back as callables that ``datvit det|seg predict --runtime`` runs through the same pipeline as a checkpoint.

**Segmenters** (UperNet, Semantic FPN): ONNX through ``datvit.tools.export.export_onnx`` (torch's dynamo
exporter). The graph is ``segment(model, image)`` in ``"whole"`` mode: input ``image`` B×3×H×W float32,
normalised; the graph zero-pads H and W at the bottom/right to multiples of 32 (smp's requirement) and crops the
logits back, so the output ``logits`` is B×K×H×W for the input's own H×W. The batch and H×W are dynamic
(``export_onnx``'s ``dynamic_size``: any H, W from the model's minimum; UperNet's pyramid pooling is rewritten
for it, ``AdaptiveAvgPool2dAnySize``). ``dynamic_size=False`` fixes H×W to the ``input_size`` exported at, and
``ExportedSegmenter`` then runs smaller images padded and ``datvit seg predict`` larger ones in sliding windows.

**Detectors** (torchvision's Mask R-CNN, Faster R-CNN, RetinaNet), measured on torch 2.14.1 / torchvision 0.29.1:

* ``torchscript``: ``torch.jit.script`` of the whole detector (resize, normalise, backbone, FPN, RPN, RoI heads,
  NMS, mask paste); any image size, any number of images, outputs bit-identical to eager. Scripting goes through
  ``DATMaskRCNN.__prepare_scriptable__`` (the torchvision class) and ``DenseBackbone.__prepare_scriptable__``.
* ``onnx``: torch's TorchScript-based exporter (``dynamo=False``, the one torchvision's own ONNX tests use): one
  image 3×H×W in 0..1 per run with H and W dynamic (the graph resizes and normalises as the detector does);
  outputs ``boxes``, ``labels``, ``scores`` (and ``masks``). It traces DAT v1 backbones; DAT++'s local perception
  unit (a depthwise convolution whose weight the fast path reshapes) stops it ("ONNX export of convolution for
  kernel of unknown shape"). ``onnx_exporter="dynamo"`` tries torch's dynamo exporter, which fails like
  torch.export below.
* ``torch-export``: fails — torchvision's post-processing branches on data-dependent sizes (``batched_nms`` on
  the number of boxes: "Could not guard on data-dependent expression"); the error names the cause.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import json
import logging
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..tools.export import DEFAULT_OPSET, ExportError, _quiet, _save_atomically, export_onnx, image_size

SEGMENTER_FORMATS = ("onnx",)
DETECTOR_FORMATS = ("torchscript", "onnx", "torch-export")
ONNX_EXPORTERS = ("legacy", "dynamo")
RUNTIMES = ("torch", "onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "torch-export": ".pt2"}
# torch's TorchScript-based ONNX exporter: torchvision's detectors are tested at opset 17 there; GridSample
# (DAT's deformable sampling) needs 16+.
LEGACY_OPSET = 17
# the JSON record of an exported file: ONNX metadata_props key, TorchScript extra file name
METADATA_KEY = "datvit"
METADATA_FILE = "datvit.json"
# the check: segmentation logits within 1e-3 and argmax equal on ≥ 99.9% of pixels; detections: the same
# boxes (matched by label, within BOX_TOLERANCE pixels) with scores within 1e-4
LOGITS_TOLERANCE = 1e-3
ARGMAX_AGREEMENT = 0.999
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """``tools.export``'s quiet context, stderr and logging off, and file descriptors 1 and 2 sent to a scratch
    file: torch's TorchScript-based ONNX exporter prints the whole graph from C++ when it fails, and torch.export
    logs its graph when it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    logging_disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with tempfile.TemporaryFile() as sink, _quiet(), contextlib.redirect_stderr(io.StringIO()):
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        logging.disable(logging_disabled)
        for fd in saved:
            os.close(fd)


def _first_line(error: BaseException) -> str:
    """The innermost cause's first line (the exporters wrap the useful message in several layers)."""
    seen: set[int] = set()
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        seen.add(id(error))
        error = error.__cause__
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line.split(" [Caused by")[0].strip()


def _write_onnx_metadata(staged: str, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(staged)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]  # the exporter's own entries
    del model.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, json.dumps(metadata))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, staged)


def _save_onnx(path: str | os.PathLike, write: Callable[[str], None], metadata: dict[str, Any]) -> str:
    """``write`` an ONNX file in a temporary directory, add ``metadata``, move it over ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path))) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".datvit-export-", dir=directory) as tmp:
        staged = os.path.join(tmp, "graph.onnx")
        write(staged)
        return _save_atomically(
            path, lambda p: (_write_onnx_metadata(staged, metadata), os.replace(staged, p)), ".onnx"
        )


# -- segmenters ---------------------------------------------------------------------------------------------------


class AdaptiveAvgPool2dAnySize(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written as two averaging matrices built from H and W in the graph: bin ``i`` of
    ``s`` averages rows ``⌊iH/s⌋ … ⌈(i+1)H/s⌉ − 1``, as PyTorch's kernel. torch's export decomposes adaptive pooling
    into gathers whose window length is fixed at the example size, so a graph with a symbolic H×W reads out of
    range at other sizes (UperNet's pyramid pooling: "GatherND … invalid index"); this one holds for every size."""

    def __init__(self, output_size: Any):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.output_size = (int(size[0]), int(size[1]))

    @staticmethod
    def _bins(n: Any, s: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(s, device=like.device).unsqueeze(1)
        j = torch.arange(n, device=like.device).unsqueeze(0)
        inside = (j >= (i * n) // s) & (j < ((i + 1) * n + s - 1) // s)
        weights = inside.to(like.dtype)
        return weights / weights.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._bins(x.shape[-2], self.output_size[0], x)  # s_h × H
        cols = self._bins(x.shape[-1], self.output_size[1], x)  # s_w × W
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class ExportableSegmenter(nn.Module):
    """``segment(segmenter, image)`` (whole image) as one module: image B×3×H×W (normalised, H, W ≥ the model's
    minimum) → logits B×K×H×W. Zero-pads the bottom/right to the next multiple of ``output_stride`` (32) and crops
    back; the padding is written with floor division only, so a symbolic H×W stays symbolic. ``any_size``: run a
    copy of the segmenter whose adaptive poolings (UperNet's pyramid pooling) are ``AdaptiveAvgPool2dAnySize``,
    for a graph with a symbolic H×W."""

    def __init__(self, segmenter: nn.Module, any_size: bool = False):
        super().__init__()
        if any_size:
            segmenter = copy.deepcopy(segmenter)
            for module in list(segmenter.modules()):
                for name, child in list(module.named_children()):
                    if isinstance(child, nn.AdaptiveAvgPool2d):
                        setattr(module, name, AdaptiveAvgPool2dAnySize(child.output_size))
        self.segmenter = segmenter
        self.multiple = int(getattr(segmenter, "output_stride", 32))
        self.min_input_size = int(getattr(segmenter, "min_input_size", 32))
        self.in_chans = 3

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        m = self.multiple
        ph, pw = (h + m - 1) // m * m - h, (w + m - 1) // m * m - w
        x = F.pad(image, (0, pw, 0, ph))
        net = self.segmenter.net  # the eval forward of Segmenter, without its Python size checks
        logits = net.segmentation_head(net.decoder(net.encoder(x)))
        return logits[:, :, :h, :w]


def dynamic_size_supported() -> bool:
    """Whether ``datvit.tools.export.export_onnx`` exports the DAT backbone with a symbolic H×W (its
    ``dynamic_size`` argument)."""
    return "dynamic_size" in inspect.signature(export_onnx).parameters


def resolve_segmenter_size(segmenter: nn.Module, img_size: Optional[Sequence[int]], default: int) -> tuple[int, int]:
    """(H, W) to export or check at: ``img_size`` (H, or H W) or ``default``; ValueError below the model's minimum."""
    return image_size(img_size, default, int(getattr(segmenter, "min_input_size", 32)))


def export_segmenter(
    segmenter: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    dynamic_size: Optional[bool] = None,
    opset: int = DEFAULT_OPSET,
    metadata: Optional[dict[str, Any]] = None,
    sampling: Optional[str] = None,
) -> str:
    """Write ``segmenter`` (put in eval mode) as ONNX: input ``image`` B×3×H×W, output ``logits`` B×K×H×W (see
    the module docstring). ``input_size`` (H, W) is the example (and, for a fixed graph, the only) size;
    ``dynamic_size``: a symbolic H×W (None: whenever the backbone supports it). ``metadata`` (class names, data
    config) is stored in the file for ``load_exported_segmenter``. ``sampling``: the deformable blocks'
    formulation, as ``datvit export --sampling`` (None: ``export_onnx``'s default). Returns the path written."""
    if dynamic_size is None:
        dynamic_size = dynamic_size_supported()
    elif dynamic_size and not dynamic_size_supported():
        raise ExportError(
            "a dynamic H×W needs the DAT backbone to export with symbolic sizes, which this datvit's "
            "tools.export.export_onnx does not offer yet; export at a fixed size (dynamic_size=False)"
        )
    segmenter.eval()
    wrapper = ExportableSegmenter(segmenter, any_size=bool(dynamic_size)).eval()
    h, w = int(input_size[0]), int(input_size[1])
    kwargs: dict[str, Any] = {"dynamic_size": bool(dynamic_size)} if dynamic_size_supported() else {}
    if sampling is not None:
        kwargs["sampling"] = sampling
    record = dict(metadata or {})
    record.update(task="segmentation", format="onnx", dynamic_size=bool(dynamic_size), input_size=[h, w])
    record["min_input_size"] = wrapper.min_input_size
    if sampling is not None:
        record["sampling"] = sampling

    def write(staged: str) -> None:
        export_onnx(wrapper, staged, (3, h, w), dynamic_batch=True, opset=opset, **kwargs)

    return _save_onnx(path, write, record)


@dataclasses.dataclass(frozen=True)
class SegmenterCheck:
    """One input size of a segmenter check: the largest |Δ| of the logits and the share of pixels whose argmax
    agrees, exported file vs eager."""

    input_shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float
    output_max_abs: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= LOGITS_TOLERANCE and self.argmax_agreement >= ARGMAX_AGREEMENT


def check_segmenter_export(
    path: str | os.PathLike,
    segmenter: nn.Module,
    sizes: Sequence[Sequence[int]],
    batch: int = 2,
    seed: int = 1,
) -> list[SegmenterCheck]:
    """Run the ONNX file (onnxruntime, CPU) and ``segment(segmenter, x)`` on the same random batch at each (H, W)
    of ``sizes``; ExportError when the file fails to run or returns another shape."""
    from .sliding import segment

    run = load_exported_segmenter(path)
    segmenter.eval()
    g = torch.Generator().manual_seed(seed)
    results = []
    for h, w in sizes:
        x = torch.randn(batch, 3, int(h), int(w), generator=g)
        expected = segment(segmenter, x)
        try:
            actual = run.run(x)
        except Exception as e:
            raise ExportError(f"running {os.fspath(path)} on {tuple(x.shape)} failed: {_first_line(e)}") from e
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(
                f"{os.fspath(path)} returns logits of shape {tuple(actual.shape)}, eager {tuple(expected.shape)}"
            )
        diff = (actual - expected).abs().max().item()
        agree = (actual.argmax(1) == expected.argmax(1)).float().mean().item()
        results.append(SegmenterCheck(tuple(x.shape), diff, agree, expected.abs().max().item()))
    return results


def _onnx_session(path: str):
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as e:
        raise ExportError(f"running an ONNX file needs onnxruntime ({e})") from e
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions, reported in one line
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ValueError(f"{path} is not an ONNX file onnxruntime can load ({_first_line(e)})") from e


def _onnx_metadata(session: Any, path: str) -> dict[str, Any]:
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path} was not written by datvit det|seg export (no '{METADATA_KEY}' metadata)")
    return json.loads(text)


class ExportedSegmenter:
    """An exported segmenter as ``segment()`` expects a model: ``model(x)`` with x B×3×H×W normalised → logits
    B×K×H×W (a torch tensor on CPU). A graph fixed to one size (``fixed_size`` (H, W), None when dynamic) takes
    smaller inputs zero-padded at the bottom/right and cropped back; larger images go through sliding windows of
    that size (``datvit seg predict`` does so)."""

    output_stride = 1  # the graph pads to its own multiple
    min_input_size = 0  # a fixed graph: __call__ pads to its size

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        self.session = _onnx_session(self.path)
        self.metadata = _onnx_metadata(self.session, self.path)
        if self.metadata.get("task") != "segmentation":
            raise ValueError(f"{self.path} holds an exported {self.metadata.get('task')} model; use datvit det")
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_size = None if self.metadata.get("dynamic_size") else tuple(self.metadata["input_size"])
        if self.fixed_size is None:  # segment() pads smaller images up to the graph's minimum
            self.min_input_size = int(self.metadata.get("min_input_size", 0))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The graph on ``x`` as it is (no padding)."""
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is None:
            return self.run(x)
        h, w = x.shape[-2:]
        fh, fw = self.fixed_size
        if h > fh or w > fw:
            raise ValueError(
                f"{self.path} was exported at {fh}×{fw} and cannot take {h}×{w}: use sliding windows "
                f"(--eval-mode slide) or export with a dynamic size"
            )
        return self.run(F.pad(x.cpu(), (0, fw - w, 0, fh - h)))[..., :h, :w]


def load_exported_segmenter(path: str | os.PathLike) -> ExportedSegmenter:
    """An ONNX file written by ``export_segmenter`` / ``datvit seg export``, run by onnxruntime on CPU."""
    return ExportedSegmenter(path)


# -- detectors ----------------------------------------------------------------------------------------------------


def detector_output_names(detector: nn.Module) -> list[str]:
    """The keys of the detector's per-image output dict, in its order (RetinaNet: boxes, scores, labels)."""
    from torchvision.models.detection import MaskRCNN, RetinaNet

    if isinstance(detector, RetinaNet):
        return ["boxes", "scores", "labels"]
    return ["boxes", "labels", "scores"] + (["masks"] if isinstance(detector, MaskRCNN) else [])


# why torch.export fails on torchvision's detectors (torch 2.14.1, torchvision 0.29.1): after the score filter the
# number of boxes is data-dependent, and batched_nms compares boxes.numel() with 4000 and with 0
_DATA_DEPENDENT = "torchvision's post-processing branches on data-dependent sizes: batched_nms tests boxes.numel()"


def _example_image(size: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.rand(3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(seed))


def export_detector(
    detector: nn.Module,
    fmt: str,
    path: str | os.PathLike,
    image_size: Sequence[int] = (480, 640),
    onnx_exporter: str = "legacy",
    opset: Optional[int] = None,
    metadata: Optional[dict[str, Any]] = None,
) -> str:
    """Write ``detector`` (eval mode; not modified: scripting works on a deep copy) as ``fmt`` (one of
    ``DETECTOR_FORMATS``; see the module docstring for what each exporter takes). ``image_size`` (H, W) is the
    example image the ONNX exporters trace with (its H and W stay dynamic). ``metadata`` (class names, data
    config) goes into the file for ``load_exported_detector``. ExportError names the exporter's reason."""
    if fmt not in DETECTOR_FORMATS:
        raise ValueError(f"unknown detector export format {fmt!r}; choose one of {', '.join(DETECTOR_FORMATS)}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {onnx_exporter!r}; choose one of {', '.join(ONNX_EXPORTERS)}")
    detector.eval()
    names = detector_output_names(detector)
    record = dict(metadata or {})
    record.update(task="detection", format=fmt, outputs=names)
    image = _example_image(image_size)
    if fmt == "torchscript":
        try:
            with _silenced():
                scripted = torch.jit.script(copy.deepcopy(detector))
        except Exception as e:
            raise ExportError(f"torch.jit.script failed: {_first_line(e)}") from e
        extra = {METADATA_FILE: json.dumps(record)}

        def save(staged: str) -> None:
            with _quiet():  # torch.jit.save's deprecation notice
                torch.jit.save(scripted, staged, _extra_files=extra)

        return _save_atomically(path, save, ".pt")
    if fmt == "torch-export":
        try:
            with _silenced(), torch.no_grad():
                program = torch.export.export(detector, ([image],))
        except Exception as e:
            raise ExportError(
                f"torch.export cannot export torchvision's {type(detector).__name__}: {_first_line(e)} "
                f"({_DATA_DEPENDENT}; use --format torchscript or onnx)"
            ) from e
        return _save_atomically(path, lambda p: torch.export.save(program, p), ".pt2")
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError as e:
        raise ExportError(f"ONNX export needs the onnx package ({e})") from e
    record["onnx_exporter"] = onnx_exporter
    if onnx_exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ModuleNotFoundError as e:
            raise ExportError(f"the dynamo ONNX exporter needs onnxscript ({e})") from e

        def write(staged: str) -> None:
            try:
                with _silenced(), torch.no_grad():
                    program = torch.onnx.export(
                        detector, ([image],), dynamo=True, opset_version=opset or DEFAULT_OPSET, external_data=False
                    )
            except Exception as e:
                raise ExportError(
                    f"the dynamo ONNX exporter cannot export torchvision's {type(detector).__name__}: it runs "
                    f"torch.export first, which fails: {_first_line(e)} ({_DATA_DEPENDENT}; use --onnx-exporter "
                    "legacy)"
                ) from e
            program.save(staged, external_data=False)

    else:

        def write(staged: str) -> None:
            axes = {"image": {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
            try:
                with _silenced(), torch.no_grad():
                    torch.onnx.export(
                        detector,
                        ([image],),
                        staged,
                        dynamo=False,
                        opset_version=opset or LEGACY_OPSET,
                        input_names=["image"],
                        output_names=names,
                        dynamic_axes=axes,
                    )
            except Exception as e:
                raise ExportError(f"ONNX export (TorchScript-based exporter) failed: {_first_line(e)}") from e

    return _save_onnx(path, write, record)


class ExportedDetector:
    """An exported detector called like the eager one in eval mode: ``model([image, ...])`` with C×H×W float
    images in 0..1 → one dict per image (``boxes``, ``labels``, ``scores``, ``masks`` for Mask R-CNN), CPU tensors.
    ``runtime``: ``"onnx"`` (onnxruntime, CPU; one image per run) or ``"torchscript"``."""

    def __init__(self, path: str | os.PathLike, runtime: Optional[str] = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        if runtime is None:
            runtime = {".onnx": "onnx", ".pt2": "torch-export"}.get(os.path.splitext(self.path)[1], "torchscript")
        if runtime not in ("onnx", "torchscript", "torch-export"):
            raise ValueError(f"runtime must be onnx, torchscript or torch-export, got {runtime!r}")
        self.runtime = runtime
        if runtime == "onnx":
            self.session = _onnx_session(self.path)
            self.metadata = _onnx_metadata(self.session, self.path)
            self.names = [o.name for o in self.session.get_outputs()]
        elif runtime == "torch-export":  # what a torch that exports torchvision's detectors would write
            with open(self.path, "rb") as f:
                self.module = torch.export.load(io.BytesIO(f.read())).module()
            self.metadata = {"task": "detection"}
        else:
            extra = {METADATA_FILE: ""}
            try:
                with _quiet():
                    self.module = torch.jit.load(self.path, map_location="cpu", _extra_files=extra).eval()
            except Exception as e:
                raise ValueError(f"{self.path} is not a TorchScript file ({_first_line(e)})") from e
            if not extra[METADATA_FILE]:
                raise ValueError(f"{self.path} was not written by datvit det export (no {METADATA_FILE})")
            self.metadata = json.loads(extra[METADATA_FILE])
        if self.metadata.get("task") != "detection":
            raise ValueError(f"{self.path} holds an exported {self.metadata.get('task')} model; use datvit seg")

    def to(self, device: Any) -> "ExportedDetector":
        return self  # runs on CPU

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        images = [img.detach().cpu().float() for img in images]
        if self.runtime != "onnx":
            # TorchScript's profiling executor re-optimises the graph on the first calls (measured: 7 s for each of
            # the first two calls of a small Mask R-CNN on CPU, then as fast as eager); without it, eager's kernels
            # from the first call. _quiet: "RCNN always returns a (Losses, Detections) tuple in scripting".
            with torch.no_grad(), torch.jit.optimized_execution(False), _quiet():
                out = self.module(images)
            return list(out[1] if isinstance(out, tuple) else out)
        results = []
        for img in images:
            arrays = self.session.run(None, {"image": img.numpy()})
            results.append({n: torch.from_numpy(a) for n, a in zip(self.names, arrays)})
        return results


def load_exported_detector(path: str | os.PathLike, runtime: Optional[str] = None) -> ExportedDetector:
    """A file written by ``export_detector`` / ``datvit det export`` (ONNX or TorchScript; ``runtime`` None:
    from the suffix, ``.onnx`` is ONNX)."""
    return ExportedDetector(path, runtime)


def load_exported(path: str | os.PathLike, task: str, runtime: str) -> tuple[Any, dict[str, Any]]:
    """(callable model, record) for ``datvit det|seg predict --runtime``: the exported file as the model, and
    what a checkpoint would give the predict pipeline (``class_names``, ``data_config``) from its metadata."""
    if task == "detection":
        model: Any = load_exported_detector(path, runtime)
    else:
        if runtime != "onnx":
            raise ValueError(f"--runtime {runtime}: datvit seg export writes ONNX only; use --runtime onnx")
        model = load_exported_segmenter(path)
    meta = model.metadata
    return model, {"class_names": list(meta.get("class_names") or []), "data_config": meta.get("data_config") or {}}


@dataclasses.dataclass(frozen=True)
class DetectorCheck:
    """One image of a detector check: detections of eager and of the exported file, matched by label and box;
    the largest box difference (pixels) and score difference over the matched pairs."""

    image_shape: tuple[int, ...]
    eager_detections: int
    exported_detections: int
    matched: bool
    max_box_diff: float
    max_score_diff: float

    @property
    def ok(self) -> bool:
        return (
            self.matched
            and self.eager_detections == self.exported_detections
            and self.max_box_diff <= BOX_TOLERANCE
            and self.max_score_diff <= SCORE_TOLERANCE
        )


def match_detections(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> tuple[bool, float, float]:
    """(every expected detection has an actual one of its label, largest box |Δ|, largest score |Δ|): each
    expected detection, in score order, takes the nearest unused actual detection of its label (NMS order is
    ambiguous between equal scores)."""
    used: set[int] = set()
    box_diff = score_diff = 0.0
    for i in range(len(expected["boxes"])):
        best: Optional[tuple[float, int]] = None
        for j in range(len(actual["boxes"])):
            if j in used or int(actual["labels"][j]) != int(expected["labels"][i]):
                continue
            d = (actual["boxes"][j].float() - expected["boxes"][i].float()).abs().max().item()
            if best is None or d < best[0]:
                best = (d, j)
        if best is None:
            return False, float("inf"), float("inf")
        used.add(best[1])
        box_diff = max(box_diff, best[0])
        score_diff = max(score_diff, abs(float(actual["scores"][best[1]]) - float(expected["scores"][i])))
    return True, box_diff, score_diff


def check_detector_export(
    path: str | os.PathLike,
    detector: nn.Module,
    sizes: Sequence[Sequence[int]],
    runtime: Optional[str] = None,
    seed: int = 1,
) -> list[DetectorCheck]:
    """Run the exported file and the eager detector on one random image of each (H, W) in ``sizes``."""
    run = load_exported_detector(path, runtime)
    detector.eval()
    results = []
    for k, size in enumerate(sizes):
        image = _example_image(size, seed + k)
        with torch.no_grad():
            expected = detector([image])[0]
        try:
            actual = run([image])[0]
        except Exception as e:
            raise ExportError(f"running {os.fspath(path)} on {tuple(image.shape)} failed: {_first_line(e)}") from e
        matched, box, score = match_detections(expected, actual)
        results.append(
            DetectorCheck(tuple(image.shape), len(expected["boxes"]), len(actual["boxes"]), matched, box, score)
        )
    return results


__all__ = [
    "DETECTOR_FORMATS",
    "SEGMENTER_FORMATS",
    "DetectorCheck",
    "ExportableSegmenter",
    "ExportedDetector",
    "ExportedSegmenter",
    "SegmenterCheck",
    "check_detector_export",
    "check_segmenter_export",
    "export_detector",
    "export_segmenter",
    "load_exported",
    "load_exported_detector",
    "load_exported_segmenter",
]
