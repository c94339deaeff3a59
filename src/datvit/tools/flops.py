"""Parameters and multiply-adds of a model per stage, counted the way the DAT and DAT++ papers count them.

**The convention.** The papers' "FLOPs" are fvcore's count of the authors' code (run on the
authors' code, it reproduces their ablation table to the third decimal; ``tests/test_flops.py`` holds datvit to
those counts): one per multiply-add of every convolution, linear
layer and matmul/einsum, plus 5 per element of a LayerNorm input, 4 per output element of a bilinear
``grid_sample`` and 1 per input element of the global average pool; activations, softmax, additions and indexing
are free. :func:`count_flops` traces one forward with ``torch.utils.flop_counter.FlopCounterMode`` (which counts
2 per multiply-add of conv/mm/bmm) and adds handlers for what it lacks (``grid_sampler_2d``, ``native_layer_norm``,
the global pool, and the CPU kernels of ``scaled_dot_product_attention``); the report is in multiply-adds.

**Which path is traced.** DAT models are counted on their plain reference path, whose operations are those of
the papers: neighborhood attention there gathers each query's k×k = 49 keys, as NATTEN's counter assumes. The
fast path cuts queries into 7×7 tiles that attend to a (7+6)² = 169-key halo under a mask (3.4× the attention
multiply-adds of an N block) and, on maps of at most 14×14, to the whole map (196 keys); traced, datpp_tiny's
fast path counts 4.517G instead of 4.288G (published 4.3G): +5%, all of it in the N blocks. Both paths hold the
same weights and give the same output (tested to 1e-5), so the reference count is the model's count. Window and
deformable attention cost the same on both paths.

**No arithmetic is run.** The forward is traced with the parameters swapped for ``meta`` tensors
(``torch.func.functional_call``), so counting takes a second or two for any variant on a CPU and needs no
memory for activations; the model itself is not modified.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

# The papers' numbers (README "Models" table; arXiv 2201.00520 and 2309.01430): parameters (millions, as printed) and GFLOPs.
PUBLISHED: dict[str, tuple[float, float]] = {
    "dat_tiny": (29, 4.6),
    "dat_small": (50, 9.0),
    "dat_base": (88, 15.8),
    "dat_base_384": (88, 49.8),
    "datpp_tiny": (24, 4.3),
    "datpp_small": (53, 9.4),
    "datpp_base": (93, 16.6),
    "datpp_base_384": (94, 49.7),
}


# -- counting rules (FlopCounterMode counts 2 per multiply-add; these handlers keep that unit) -------------------


def _grid_sample_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    """Bilinear sampling: 4 multiply-adds per output element (the four corner weights), fvcore's rule."""
    return 2 * 4 * math.prod(out_shape)


def _layer_norm_flop(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    """LayerNorm: 5 per input element with an affine transform (4 without), fvcore's rule."""
    return 2 * (5 if weight_shape is not None else 4) * math.prod(input_shape)


def _mean_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    """Average pooling: 1 per input element, fvcore's rule for ``adaptive_avg_pool2d``."""
    return 2 * math.prod(input_shape)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``scaled_dot_product_attention`` on CPU (missing from torch's registry): q·kᵀ and attn·v."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def paper_flop_formulas() -> dict[Any, Callable[..., int]]:
    """The handlers :func:`count_flops` adds to ``FlopCounterMode(custom_mapping=...)``; usable with any
    ``FlopCounterMode`` (e.g. around a training step). Counts are in torch's unit, 2 per multiply-add."""
    aten = torch.ops.aten
    formulas = {
        aten.grid_sampler_2d: _grid_sample_flop,
        aten.native_layer_norm: _layer_norm_flop,
        aten.mean: _mean_flop,
    }
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"):
        op = getattr(aten, name, None)
        if op is not None:
            formulas[op] = _sdpa_cpu_flop
    return formulas


# -- the report -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopsRow:
    """One part of the network: ``name`` (stem, stage 1…, head), what it is (``detail``: map size and block
    kinds), its parameters and multiply-adds, and the multiply-adds by operator."""

    name: str
    params: int
    macs: int
    detail: str = ""
    by_op: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FlopsReport:
    """Per-part and total parameters and multiply-adds (the papers' "FLOPs") of one forward at ``input_size``
    and batch 1. ``path`` is the path that was traced ("reference" for DAT models, else "model")."""

    model: str
    input_size: tuple[int, int, int]
    rows: tuple[FlopsRow, ...]
    path: str = "reference"

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def gflops(self) -> float:
        """Multiply-adds in units of 10⁹, the papers' "GFLOPs"."""
        return self.macs / 1e9

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            for k, v in r.by_op.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model,
            input_size=list(self.input_size),
            path=self.path,
            params=self.params,
            macs=self.macs,
            gflops=self.gflops,
            by_op=self.by_op(),
            rows=[{**asdict(r), "by_op": dict(r.by_op)} for r in self.rows],
            published=_published_dict(self.model, self.input_size),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        return format_report(self)


def _published_dict(name: str, input_size) -> Optional[dict[str, float]]:
    pub = published_for(name, input_size)
    return None if pub is None else {"params_m": pub[0], "gflops": pub[1]}


def published_for(name: str, input_size=None) -> Optional[tuple[float, float]]:
    """The papers' (params in M, GFLOPs) for a released variant at its evaluation size, else None."""
    if name not in PUBLISHED:
        return None
    if input_size is not None:
        size = 384 if name.endswith("_384") else 224
        if tuple(input_size[-2:]) != (size, size):
            return None
    return PUBLISHED[name]


def _m(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def _g(n: int) -> str:
    return f"{n / 1e9:.3f}G" if n >= 1e8 else f"{n / 1e6:.2f}M"


def format_report(report: FlopsReport) -> str:
    """A plain-text table: one line per part, the total and, for released variants, the papers' numbers."""
    c, h, w = report.input_size
    path = f", {report.path} path" if report.path in ("reference", "fast") else ""
    lines = [f"{report.model} at {c}×{h}×{w}, batch 1 — multiply-adds (the papers' FLOPs, fvcore convention)" + path]
    width = max([len(r.detail) for r in report.rows] + [6])
    lines.append(f"{'part':8s}  {'':{width}s}  {'params':>10s}  {'FLOPs':>9s}  {'share':>6s}")
    total = max(report.macs, 1)
    for r in report.rows:
        lines.append(
            f"{r.name:8s}  {r.detail:{width}s}  {_m(r.params):>10s}  {_g(r.macs):>9s}  {100 * r.macs / total:5.1f}%"
        )
    lines.append(f"{'total':8s}  {'':{width}s}  {_m(report.params):>10s}  {_g(report.macs):>9s}")
    pub = published_for(report.model, report.input_size)
    if pub is not None:
        lines.append(
            f"{'paper':8s}  {'':{width}s}  {pub[0]:>9g}M  {pub[1]:>8g}G  ({100 * (report.gflops / pub[1] - 1):+.2f}%)"
        )
    return "\n".join(lines)


# -- counting -------------------------------------------------------------------------------------------------------


def _default_input_size(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])
    size = int(getattr(model, "img_size", 224))
    return (int(getattr(model, "in_chans", 3)), size, size)


def _stage_list(model: nn.Module) -> Optional[Sequence[nn.Module]]:
    """The model's stages (DAT and timm's ConvNeXt: ``stages``; timm's Swin: ``layers``), or None."""
    for attr in ("stages", "layers"):
        stages = getattr(model, attr, None)
        if isinstance(stages, (nn.ModuleList, nn.Sequential)) and len(stages) > 0:
            return stages
    return None


def _part_of(param_name: str, stage_attr: str, num_stages: int) -> str:
    """Which row a parameter belongs to: stem, stage i (incl. the downsampling into it), or head."""
    parts = param_name.split(".")
    if parts[0] in ("patch_proj", "patch_embed", "stem"):
        return "stem"
    if parts[0] == stage_attr and len(parts) > 1 and parts[1].isdigit():
        return f"stage {int(parts[1]) + 1}"
    if parts[0] == "down_projs" and parts[1].isdigit():  # DAT: the downsampling before stage i + 2
        return f"stage {int(parts[1]) + 2}"
    if parts[0] == "norms" and parts[1].isdigit() and int(parts[1]) < num_stages:  # DAT's dense-task norms
        return f"stage {int(parts[1]) + 1}"
    return "head"


def _stage_detail(stage: nn.Module, out: Any, channels_last: Optional[bool]) -> str:
    """'56×56 LS' for a DAT stage (map size from its output, block letters from its spec); other models' stages
    get the map size, their layout guessed (channels-last when C is the last and largest axis)."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    size = ""
    if isinstance(t, torch.Tensor) and t.dim() == 4:
        if channels_last is None:
            channels_last = t.shape[-1] > t.shape[1]
        hw = t.shape[1:3] if channels_last else t.shape[-2:]
        size = f"{hw[0]}×{hw[1]}"
    spec = "".join(getattr(stage, "stage_spec", None) or [])
    for n in range(1, len(spec) + 1):  # "NDNDND" → "ND×3"
        if len(spec) % n == 0 and spec[:n] * (len(spec) // n) == spec:
            spec = spec[:n] + (f"×{len(spec) // n}" if len(spec) > n else "")
            break
    return f"{size} {spec}".strip()


@torch.no_grad()
def count_flops(
    model: nn.Module, input_size: Optional[Sequence[int]] = None, *, name: Optional[str] = None, path: str = "reference"
) -> FlopsReport:
    """Parameters and multiply-adds of ``model`` for one image of ``input_size`` (C, H, W; default: the model's
    pretrained_cfg input size, else its ``img_size``), per stem / stage (each with the downsampling into it) /
    head, in the papers' convention (see the module docstring).

    The model is traced on the ``meta`` device with its parameters swapped out: nothing is computed and the
    model is left as it was (a forward that needs tensor values is traced once for real instead). ``path``:
    "reference" (default; the count the papers report) or "fast" (DAT models only; what the fast path's
    operations add up to). Models other than DAT are counted as they run, per ``stages``/``layers`` entry when
    they have them.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if path not in ("reference", "fast"):
        raise ValueError(f"path must be 'reference' or 'fast', got {path!r}")
    size = tuple(int(v) for v in (input_size if input_size is not None else _default_input_size(model)))
    if len(size) == 2:
        size = (int(getattr(model, "in_chans", 3)),) + size
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive sizes, got {tuple(input_size)}")
    is_dat = hasattr(model, "set_reference") and hasattr(model, "reference")
    min_size = getattr(model, "min_input_size", None)
    if min_size is not None and min(size[1:]) < min_size:
        raise ValueError(
            f"input size {size[1]}×{size[2]} is below this model's minimum of {min_size}×{min_size} (patch size × 8)"
        )
    name = name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__

    meta = {
        n: torch.empty_like(t, device="meta") for n, t in list(model.named_parameters()) + list(model.named_buffers())
    }
    x = torch.empty((1,) + size, device="meta")
    stages = _stage_list(model)
    stage_attr = "stages" if stages is getattr(model, "stages", None) else "layers"
    counter = FlopCounterMode(display=False, custom_mapping=paper_flop_formulas())

    def snapshot() -> dict[str, int]:
        return {str(op).replace("aten.", ""): v for op, v in counter.flop_counts["Global"].items()}

    layout = (path == "fast") if is_dat else None  # DAT: channels-last on the fast path only
    starts: dict[int, dict[str, int]] = {}  # op counts when stage i starts / ends
    ends: dict[int, tuple[dict[str, int], str]] = {}
    handles = []
    for i, stage in enumerate(stages if stages is not None else []):

        def on_start(module, args, i=i) -> None:
            starts.setdefault(i, snapshot())

        def on_end(module, args, out, i=i) -> None:
            ends[i] = (snapshot(), _stage_detail(module, out, layout))

        handles += [stage.register_forward_pre_hook(on_start), stage.register_forward_hook(on_end)]
    was_reference, was_training = getattr(model, "reference", None), model.training
    try:
        model.eval()
        if is_dat:
            model.set_reference(path == "reference")
        elif path == "fast":
            raise ValueError("path='fast' is only meaningful for DAT models (they have two paths)")
        try:
            with counter:
                torch.func.functional_call(model, meta, (x,), strict=False)
        except (NotImplementedError, RuntimeError):
            # a forward that reads tensor values (``.item()``, data-dependent shapes) cannot run on meta:
            # trace it once for real, on the model's device (FlopCounterMode starts from zero again)
            starts.clear()
            ends.clear()
            device = next(iter(model.parameters()), torch.empty(0)).device
            with counter:
                model(torch.zeros((1,) + size, device=device))
        final = snapshot()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if is_dat:
            model.set_reference(was_reference)

    def between(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
        """Multiply-adds by operator from snapshot a to snapshot b (torch counts 2 per multiply-add)."""
        return {op: (v - a.get(op, 0)) // 2 for op, v in b.items() if v - a.get(op, 0)}

    num_stages = len(stages) if stages is not None else 0
    params: dict[str, int] = {}
    for pname, p in model.named_parameters():
        part = _part_of(pname, stage_attr, num_stages) if stages is not None else "model"
        params[part] = params.get(part, 0) + p.numel()

    def row(part: str, ops: dict[str, int], detail: str = "") -> FlopsRow:
        return FlopsRow(part, params.pop(part, 0), sum(ops.values()), detail, ops)

    rows: list[FlopsRow] = []
    if not ends or sorted(ends) != list(range(num_stages)):
        rows.append(FlopsRow("model", sum(params.values()), sum(between({}, final).values()), "", between({}, final)))
    else:
        rows.append(row("stem", between({}, starts[0])))
        previous: Mapping[str, int] = starts[0]
        for i in range(num_stages):
            end, detail = ends[i]
            rows.append(row(f"stage {i + 1}", between(previous, end), detail))
            previous = end
        rows.append(row("head", between(previous, final)))
        if params:  # parameters of parts that never ran
            rows[-1] = FlopsRow("head", rows[-1].params + sum(params.values()), rows[-1].macs, "", rows[-1].by_op)
    return FlopsReport(name, size, tuple(rows), path if is_dat else "model")


# -- the released variants and the DAT paper's stage ablation ----------------------------------------------------------------


class _DropPathScheduleOnCpu(torch.overrides.TorchFunctionMode):
    """Inside ``torch.device("meta")``: keep ``torch.linspace`` on the CPU, because ``DAT.__init__`` reads the
    drop-path schedule back with ``.tolist()`` (a meta tensor has no values)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def build_on_meta(model_kwargs: Mapping[str, Any]) -> nn.Module:
    """``DAT(**model_kwargs)`` with every parameter on the ``meta`` device: shapes only, enough for
    :func:`count_flops`, and ~17× faster to build than on the CPU with random init (dat_base: 0.7 s vs 12.5 s on
    the project's shared 2-core machine)."""
    from ..models import DAT

    with torch.device("meta"), _DropPathScheduleOnCpu():
        return DAT(**model_kwargs)


def variant_input_size(name: str) -> tuple[int, int, int]:
    """The evaluation input size of a released variant (its timm pretrained_cfg): 384 for the *_384 ones."""
    import timm

    import datvit  # noqa: F401  (registers the variants)

    return tuple(timm.models.get_pretrained_cfg(name).input_size)


def count_variant_flops(name: str, input_size: Optional[Sequence[int]] = None, **overrides: Any) -> FlopsReport:
    """:func:`count_flops` of a released variant (built on the meta device) at its evaluation size."""
    from ..models import model_config

    kwargs = {**model_config(name), **overrides}
    return count_flops(build_on_meta(kwargs), input_size or variant_input_size(name), name=name)


@dataclass(frozen=True)
class AblationEntry:
    """One line of the DAT paper's stage ablation: the (1-based) stages that use D blocks; the parameters and
    GFLOPs of the authors' code (fvcore) and the published ones with the top-1."""

    d_stages: tuple[int, ...]
    authors_params_m: float
    authors_gflops: float
    published_params_m: float
    published_gflops: float
    top1: float


ABLATION: tuple[AblationEntry, ...] = (
    AblationEntry((1, 2, 3, 4), 28.386, 4.639, 28.39, 4.64, 81.7),
    AblationEntry((2, 3, 4), 28.341, 4.596, 28.34, 4.60, 81.9),
    AblationEntry((3, 4), 28.319, 4.589, 28.32, 4.59, 82.0),
    AblationEntry((4,), 28.287, 4.509, 28.29, 4.51, 81.4),
    AblationEntry((), 28.286, 4.508, 28.29, 4.51, 81.3),
)
# D blocks in stages 1–2 of the ablation, as the authors' ablation code builds them: key grid downsampled by the offset
# network's stride 4 and 2, groups 1 and 2, offset factors 1 and 2, position bias on; stages 3–4 as dat_tiny.
_ABLATION_D_STAGE = dict(groups=(1, 2, 3, 6), strides=(4, 2, 1, 1), offset_range_factor=(1, 2, 2, 2))


def ablation_config(d_stages: Sequence[int]) -> dict[str, Any]:
    """dat_tiny's constructor arguments with D blocks (pattern L,D) in ``d_stages`` (1-based) and L,S elsewhere."""
    from ..models import model_config

    cfg = model_config("dat_tiny")
    lists = {k: list(cfg[k]) for k in ("stage_spec", "groups", "strides", "offset_range_factor", "use_pes")}
    for i, depth in enumerate(cfg["depths"]):
        with_d = (i + 1) in d_stages
        lists["stage_spec"][i] = ["L", "D" if with_d else "S"] * (depth // 2)
        if with_d:
            for key in ("groups", "strides", "offset_range_factor"):
                lists[key][i] = _ABLATION_D_STAGE[key][i]
            lists["use_pes"][i] = True
    cfg.update(lists)
    return cfg


def count_ablation() -> list[tuple[AblationEntry, FlopsReport]]:
    """The DAT paper's stage ablation table counted on our models (224×224)."""
    out = []
    for entry in ABLATION:
        label = "dat_tiny, D in stages " + (",".join(map(str, entry.d_stages)) or "none")
        out.append((entry, count_flops(build_on_meta(ablation_config(entry.d_stages)), (3, 224, 224), name=label)))
    return out


def format_ablation(results: Sequence[tuple[AblationEntry, FlopsReport]]) -> str:
    lines = [
        "The DAT paper's stage ablation (DAT-T, which stages use deformable attention; 224×224)",
        f"{'D in stages':12s}  {'params':>9s}  {'FLOPs':>7s}  {'authors code':>16s}  {'published':>14s}  top-1",
    ]
    for entry, report in results:
        stages = ",".join(map(str, entry.d_stages)) or "none"
        lines.append(
            f"{stages:12s}  {report.params / 1e6:8.3f}M  {report.gflops:6.3f}G  "
            f"{entry.authors_params_m:7.3f}M/{entry.authors_gflops:.3f}G  "
            f"{entry.published_params_m:6.2f}M/{entry.published_gflops:.2f}G  {entry.top1}"
        )
    return "\n".join(lines)
