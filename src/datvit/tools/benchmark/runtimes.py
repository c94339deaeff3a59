"""DAT against Swin-T in the runtimes people deploy with — PyTorch eager, ONNX Runtime and OpenVINO on CPU, fp32 —
timed interleaved in one process, with ONNX Runtime's profile of each graph (``datvit bench runtimes``).

    datvit bench runtimes                                         # dat_tiny, datpp_tiny, Swin-T; batch 1 and 32
    datvit bench runtimes --models dat_tiny,swin --batch-sizes 1 --rounds 9
    datvit bench runtimes --sampling grid-sample,gather           # both DAT graphs side by side

Each DAT model is exported once per ``--sampling`` with :func:`datvit.tools.export.export_onnx` (what ``datvit
export`` writes: dynamic batch and size) and every other model with torch's dynamo exporter as a new user would
(``torch.onnx.export(model, (x,), dynamo=True)``, dynamic batch). The same ONNX file runs in ONNX Runtime (CPU
provider, default ``SessionOptions``: all graph optimisations) and in OpenVINO (CPU, reshaped to the batch,
``INFERENCE_PRECISION_HINT=f32`` — OpenVINO otherwise runs bf16 on CPUs that have it). Each batch size is timed
in ``rounds`` interleaved rounds (order reversed every other round), median per subject; the ratios against the
``baseline`` model (Swin-T) in the same runtime and against the model's own PyTorch eager speed are what to read,
never the absolute figures of a shared machine. Then ONNX Runtime's profiler runs each graph ``profile_rounds``
times at the first batch size and the time per node type and the heaviest nodes are tabulated.

Writes ``runtimes.json`` and ``runtimes.md`` into ``output``; a runtime that is not installed is skipped with a
note.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import common

RUNTIMES = ("eager", "onnxruntime", "openvino")


@dataclass(frozen=True, kw_only=True)
class RuntimesConfig:
    """What :func:`run` measures: ``models`` (aliases such as ``swin`` allowed; ``baseline`` is the one the others
    are divided by) in ``runtimes`` at ``batch_sizes`` and ``img_size``; DAT graphs exported with each of
    ``sampling`` and each of ``sizes`` (``dynamic``: one graph for every H×W, ``datvit export``'s default;
    ``static``: fixed to ``img_size``, ``--static-size``); ``rounds`` interleaved rounds per batch size; ONNX Runtime's profiler over ``profile_rounds`` calls
    (0: no profile); ``threads`` for every runtime (None: the cores this process may use)."""

    models: tuple[str, ...] = ("dat_tiny", "datpp_tiny", "swin")
    baseline: str = "swin"
    runtimes: tuple[str, ...] = RUNTIMES
    batch_sizes: tuple[int, ...] = (1, 32)
    img_size: int = 224
    sampling: tuple[str, ...] = ("default",)
    sizes: tuple[str, ...] = ("dynamic",)
    rounds: int = 5
    profile_rounds: int = 3
    threads: Optional[int] = None
    output: str = f"{common.DEFAULT_OUTPUT}/runtimes"

    def __post_init__(self) -> None:
        common.freeze_sequences(self, ("models", "runtimes", "batch_sizes", "sampling", "sizes"))
        if not set(self.sizes) <= {"dynamic", "static"}:
            raise ValueError(f"--sizes takes dynamic and/or static, got {', '.join(self.sizes)}")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")


def _log(msg: str) -> None:
    print(f"[runtimes] {msg}", flush=True)


def export_graph(
    model, name: str, dat: bool, img_size: int, directory: str, sampling: str = "default", size: str = "dynamic"
) -> str:
    """The ONNX file a user would deploy: ``datvit export``'s for DAT models (``sampling`` passed on unless it is
    "default"; ``size`` "static" fixes H×W), torch's dynamo exporter with a dynamic batch for others."""
    import torch

    path = os.path.join(directory, f"{name}-{sampling}.onnx" if dat else f"{name}.onnx")
    if dat:
        from datvit.tools.export import export_onnx

        kwargs = {} if sampling == "default" else {"sampling": sampling}
        if size == "static":
            kwargs["dynamic_size"] = False
        return export_onnx(model, path, (3, img_size, img_size), **kwargs)
    from datvit.tools.export import _quiet

    x = torch.randn(2, 3, img_size, img_size)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(), (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), optimize=True
        )
    program.save(path)
    return path


def onnxruntime_runner(path: str, threads: int, profile_prefix: Optional[str] = None):
    """An ONNX Runtime CPU session of ``path`` (default options, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # ORT's worker threads spin after each run by default, which starves the PyTorch and OpenVINO calls timed
    # next in the same process (eager dat_tiny ran 10× slower interleaved with spinning sessions)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def openvino_runner(path: str, threads: int, input_shape: tuple[int, ...]):
    """The ONNX file compiled by OpenVINO for its CPU plugin at ``input_shape``, float32 inference."""
    from datvit.tools.export import compile_openvino

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return compile_openvino(path, config, input_shape=input_shape)


def summarize_ort_profile(path: str, calls: int, top: int = 12) -> dict[str, Any]:
    """ONNX Runtime's JSON profile → ms per call by node type (share of the total) and the ``top`` nodes."""
    events = json.loads(Path(path).read_text())
    by_type: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    shapes: dict[str, Any] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op, node = e["args"]["op_name"], e["name"][: -len("_kernel_time")]
        by_type[op] += e["dur"]
        by_node[(op, node)] += e["dur"]
        shapes[node] = e["args"].get("input_type_shape")
    total = sum(by_type.values()) or 1
    return {
        "ms_per_call": total / 1e3 / calls,
        "by_type": [{"op": op, "ms": us / 1e3 / calls, "share": us / total} for op, us in by_type.most_common()],
        "top_nodes": [
            {"op": op, "node": node, "ms": us / 1e3 / calls, "share": us / total, "inputs": shapes[node]}
            for (op, node), us in by_node.most_common(top)
        ],
    }


def _subjects(config: RuntimesConfig) -> list[tuple[str, str, bool, str, str]]:
    """(label, timm name, is DAT, sampling, size) per graph to build: a DAT model once per sampling and size,
    labelled ``name[sampling,size]`` where there is more than one."""
    out = []
    for alias in config.models:
        name = common.resolve_model_name(alias)
        dat = common.is_dat(name)
        label = common.SHORT_NAMES.get(name, name)
        for sampling in config.sampling if dat else ("default",):
            for size in config.sizes if dat else ("dynamic",):
                parts = [sampling] if dat and len(config.sampling) > 1 else []
                parts += [size] if dat and len(config.sizes) > 1 else []
                out.append((label + (f"[{','.join(parts)}]" if parts else ""), name, dat, sampling, size))
    return out


def run(config: RuntimesConfig) -> int:
    import torch

    threads = common.set_threads(config.threads)
    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "config": asdict(config),
        "machine": common.machine_info(torch.device("cpu"), threads),
        "notes": [],
        "results": [],
        "profiles": {},
    }
    runtimes = list(config.runtimes)
    for runtime, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if runtime in runtimes:
            try:
                __import__(module)
            except ImportError:
                runtimes.remove(runtime)
                report["notes"].append(f"{runtime} is not installed: its rows are skipped (pip install {module})")
    baseline = common.SHORT_NAMES.get(common.resolve_model_name(config.baseline), config.baseline)
    report["machine"]["runtimes"] = {r: _version(r) for r in runtimes if r != "eager"}
    built: dict[str, Any] = {}  # timm name → model (random weights, seed 0), shared by its graphs
    models: dict[str, tuple[str, Any]] = {}  # label → (timm name, model)
    graphs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="datvit-runtimes-") as tmp:
        for label, name, dat, sampling, size in _subjects(config):
            if name not in built:
                torch.manual_seed(0)
                built[name] = common.build_model(common.subject_for(name), "cpu", config.img_size).eval()
            models[label] = (name, built[name])
            if set(runtimes) & {"onnxruntime", "openvino"}:
                _log(f"exporting {label} to ONNX")
                file_name = label.replace("[", "-").replace(",", "-").rstrip("]")
                graphs[label] = export_graph(built[name], file_name, dat, config.img_size, tmp, sampling, size)
        for batch in config.batch_sizes:
            x = torch.randn(batch, 3, config.img_size, config.img_size)
            fns: dict[tuple[str, str], Callable[[], Any]] = {}
            seen_eager = set()
            for label, (name, model) in models.items():
                if "eager" in runtimes and name not in seen_eager:
                    seen_eager.add(name)
                    fns[(label.split("[")[0], "eager")] = common.inference_fn(model, x, torch.device("cpu"), None)
                if "onnxruntime" in runtimes:
                    fns[(label, "onnxruntime")] = common.onnxruntime_fn(onnxruntime_runner(graphs[label], threads), x)
                if "openvino" in runtimes:
                    compiled = openvino_runner(graphs[label], threads, tuple(x.shape))
                    array = x.numpy()
                    fns[(label, "openvino")] = lambda c=compiled, a=array: c(a)
            _log(f"batch {batch}: {len(fns)} subjects, {config.rounds} interleaved rounds")
            background: dict = {}
            times = common.time_interleaved(fns, 1, config.rounds, torch.device("cpu"), background)
            for (label, runtime), seconds in times.items():
                row = {"model": label, "runtime": runtime, "batch": batch}
                row.update(common.summarize(seconds, batch, background.get((label, runtime))))
                report["results"].append(row)
        if "onnxruntime" in runtimes and config.profile_rounds > 0:
            batch = config.batch_sizes[0]
            x = torch.randn(batch, 3, config.img_size, config.img_size).numpy()
            for label, path in graphs.items():
                session = onnxruntime_runner(path, threads, os.path.join(tmp, f"profile-{len(report['profiles'])}"))
                feed = {session.get_inputs()[0].name: x}
                for _ in range(config.profile_rounds):
                    session.run(None, feed)
                profile = summarize_ort_profile(session.end_profiling(), config.profile_rounds)
                profile["batch"] = batch
                report["profiles"][label] = profile
    report["ratios"] = ratios(report["results"], baseline)
    (out_dir / "runtimes.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "runtimes.md").write_text(markdown(report))
    print(markdown(report))
    _log(f"wrote {out_dir / 'runtimes.md'} and runtimes.json")
    return 0


def ratios(results: list[dict], baseline: str) -> list[dict]:
    """Per model, runtime and batch: images/s over the baseline model's in the same runtime and batch, and over
    the model's own PyTorch eager speed."""
    index = {(r["model"], r["runtime"], r["batch"]): r["images_per_s"] for r in results}
    out = []
    for r in results:
        base = index.get((baseline, r["runtime"], r["batch"]))
        eager = index.get((r["model"].split("[")[0], "eager", r["batch"]))
        out.append(
            {
                "model": r["model"],
                "runtime": r["runtime"],
                "batch": r["batch"],
                "images_per_s": r["images_per_s"],
                "vs_baseline": r["images_per_s"] / base if base else None,
                "vs_own_eager": r["images_per_s"] / eager if eager and r["runtime"] != "eager" else None,
            }
        )
    return out


def markdown(report: dict) -> str:
    """The results table (images/s and the two ratios) and the profile tables."""
    from .report import _fmt, _md_table

    cfg = report["config"]
    lines = [
        f"# Runtimes: {', '.join(cfg['models'])} at {cfg['img_size']}², fp32, {report['machine'].get('torch_threads')} "
        f"threads, {report['machine'].get('cpu', {}).get('model', '?')}",
        "",
    ]
    rows = [
        [
            r["model"],
            r["runtime"],
            str(r["batch"]),
            _fmt(r["images_per_s"], ".2f"),
            _fmt(r["vs_baseline"], ".3f"),
            _fmt(r["vs_own_eager"], ".3f"),
        ]
        for r in report["ratios"]
    ]
    lines.append(_md_table(["model", "runtime", "batch", "images/s", f"× {cfg['baseline']}", "× own eager"], rows))
    for label, p in report["profiles"].items():
        lines += [
            "",
            f"ONNX Runtime profile of {label} (batch {p['batch']}, {p['ms_per_call']:.1f} ms of kernels per call): "
            + ", ".join(f"{t['op']} {100 * t['share']:.1f}%" for t in p["by_type"][:10]),
        ]
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None
