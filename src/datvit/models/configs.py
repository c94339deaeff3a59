"""The architecture as data: the per-stage configuration ``DATStage`` is built from, the block pattern of each
generation, the released variants (constructor arguments of ``DAT``), and the authors' config translation."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import torch

GENERATIONS = ("v1", "pp")
BLOCK_KINDS = {
    "L": "local window attention",
    "S": "shifted window attention",
    "D": "deformable attention",
    "N": "neighborhood attention",
}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Everything one stage of blocks is built from (``DATStage(config=...)``). ``DAT`` makes one per stage from
    the authors' per-stage lists (``stage_configs``); the field names are the singular of those lists'.

    Attributes:
        dim_in, dim: channels entering the stage (a 1×1 projection when they differ) and inside it.
        depth: number of blocks. stage_spec: the block kind of each block, one letter of ``BLOCK_KINDS``.
        fmap_size: side of the stage's map at the configured image size (sizes the position tables).
        heads: attention heads. window_size: side of the L/S windows. nat_ksize: the N blocks' neighbourhood.
        groups, use_pe, stride, offset_range_factor, ksize, no_off, dwc_pe: the D blocks' (``DeformableAttention``).
        generation: "v1" (DAT) or "pp" (DAT++). use_dwc_mlp: DAT++'s MLP with a depthwise conv.
        use_lpu: a local perception unit ``x + DWConv3×3(x)`` before each block (DAT++).
        expansion: MLP hidden ratio. drop, attn_drop: dropout rates. drop_path: one stochastic-depth rate per block.
        layer_norm_eps: epsilon of every LayerNorm.
    """

    dim_in: int
    dim: int
    depth: int
    stage_spec: tuple[str, ...]
    fmap_size: int
    heads: int
    window_size: int
    groups: int
    use_pe: bool
    stride: int
    offset_range_factor: float
    ksize: int
    nat_ksize: int
    generation: str
    use_dwc_mlp: bool
    use_lpu: bool
    expansion: int
    drop: float
    attn_drop: float
    drop_path: tuple[float, ...]
    no_off: bool = False
    dwc_pe: bool = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_spec", tuple(self.stage_spec))
        object.__setattr__(self, "drop_path", tuple(self.drop_path))
        if len(self.stage_spec) != self.depth:
            raise ValueError(
                f"stage_spec {list(self.stage_spec)} has {len(self.stage_spec)} letters for depth {self.depth}"
            )
        if len(self.drop_path) != self.depth:
            raise ValueError(f"drop_path has {len(self.drop_path)} rates for depth {self.depth}")
        for kind in self.stage_spec:
            if kind not in BLOCK_KINDS:
                raise ValueError(f"unknown block kind {kind!r}; datvit supports {BLOCK_KINDS}")


# The authors' per-stage list arguments of DAT, and the StageConfig field each one fills.
PER_STAGE_ARGUMENTS = {
    "depths": "depth",
    "heads": "heads",
    "stage_spec": "stage_spec",
    "window_sizes": "window_size",
    "groups": "groups",
    "strides": "stride",
    "offset_range_factor": "offset_range_factor",
    "use_pes": "use_pe",
    "ksizes": "ksize",
    "nat_ksizes": "nat_ksize",
    "use_dwc_mlps": "use_dwc_mlp",
    "use_lpus": "use_lpu",
    "no_offs": "no_off",
    "dwc_pes": "dwc_pe",
}


def stage_configs(
    dims: Sequence[int],
    per_stage: Mapping[str, Sequence[Any]],
    *,
    dim_stem: int,
    img_size: int,
    patch_size: int,
    generation: str,
    expansion: int,
    drop_rate: float,
    attn_drop_rate: float,
    drop_path_rate: float,
    layer_norm_eps: float,
) -> tuple[StageConfig, ...]:
    """One ``StageConfig`` per stage from ``DAT``'s arguments: ``per_stage`` holds the authors' per-stage lists
    (the keys of ``PER_STAGE_ARGUMENTS``), each with one entry per stage of ``dims``.

    Each stage gets its map size at ``img_size`` (halved per stage after the patch stem) and its share of the
    stochastic-depth rates, which rise linearly from 0 to ``drop_path_rate`` over all blocks. A list of the wrong
    length raises ValueError naming it."""
    num_stages = len(dims)
    for name in PER_STAGE_ARGUMENTS:
        value = per_stage[name]
        if len(value) != num_stages:
            raise ValueError(f"{name} has {len(value)} entries but there are {num_stages} stages (dims={dims})")
    depths = per_stage["depths"]
    # on the CPU also under torch.device("meta"): the rates are read as Python floats
    dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    fmaps = stage_fmap_sizes(img_size, patch_size, num_stages)
    configs = []
    for i in range(num_stages):
        configs.append(
            StageConfig(
                dim_in=dim_stem if i == 0 else dims[i],
                dim=dims[i],
                fmap_size=fmaps[i],
                generation=generation,
                expansion=expansion,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                layer_norm_eps=layer_norm_eps,
                **{field: per_stage[name][i] for name, field in PER_STAGE_ARGUMENTS.items()},
            )
        )
    return tuple(configs)


def stage_fmap_sizes(img_size: int, patch_size: int, num_stages: int) -> list[int]:
    """The side of each stage's map at ``img_size``: the patch stem's output, halved by every downsampling."""
    return [(img_size // patch_size) // 2**i for i in range(num_stages)]


# -- the block pattern ---------------------------------------------------------------------------------------------


def _alternate(a: str, b: str, depth: int) -> list[str]:
    return [a if i % 2 == 0 else b for i in range(depth)]


def stage_spec_for(depths: Sequence[int], generation: str) -> list[list[str]]:
    """The papers' block pattern (``stage_spec``) for ``depths``: DAT v1 alternates local/shifted windows (L/S)
    in stages 1–2 and local/deformable (L/D) after; DAT++ alternates neighborhood/deformable (N/D) in every stage
    but the last, which is deformable only."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be 'v1' (DAT) or 'pp' (DAT++), got {generation!r}")
    last = len(depths) - 1
    if generation == "v1":
        return [_alternate("L", "S" if i < 2 else "D", d) for i, d in enumerate(depths)]
    return [["D"] * d if i == last else _alternate("N", "D", d) for i, d in enumerate(depths)]


# -- the released variants -----------------------------------------------------------------------------------------

_V1 = dict(
    generation="v1",
    patch_size=4,
    expansion=4,
    strides=(-1, -1, 1, 1),
    offset_range_factor=(-1, -1, 2, 2),
    use_pes=(False, False, True, True),
    ksizes=(9, 7, 5, 3),
    use_conv_patches=False,
    use_dwc_mlps=(False,) * 4,
    use_lpus=(False,) * 4,
)
_PP = dict(
    generation="pp",
    patch_size=4,
    expansion=4,
    strides=(8, 4, 2, 1),
    offset_range_factor=(-1, -1, -1, -1),
    use_pes=(True,) * 4,
    ksizes=(9, 7, 5, 3),
    nat_ksizes=(7,) * 4,
    use_conv_patches=True,
    use_dwc_mlps=(True,) * 4,
    use_lpus=(True,) * 4,
    window_sizes=(7,) * 4,
)
_T = dict(dim_stem=96, dims=(96, 192, 384, 768), heads=(3, 6, 12, 24))
_B = dict(dim_stem=128, dims=(128, 256, 512, 1024), heads=(4, 8, 16, 32))

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "dat_tiny": dict(
        _V1, **_T, img_size=224, depths=(2, 2, 6, 2), groups=(-1, -1, 3, 6), window_sizes=(7,) * 4, drop_path_rate=0.2
    ),
    "dat_small": dict(
        _V1, **_T, img_size=224, depths=(2, 2, 18, 2), groups=(-1, -1, 3, 6), window_sizes=(7,) * 4, drop_path_rate=0.3
    ),
    "dat_base": dict(
        _V1, **_B, img_size=224, depths=(2, 2, 18, 2), groups=(-1, -1, 4, 8), window_sizes=(7,) * 4, drop_path_rate=0.5
    ),
    "dat_base_384": dict(
        _V1, **_B, img_size=384, depths=(2, 2, 18, 2), groups=(-1, -1, 4, 8), window_sizes=(12,) * 4, drop_path_rate=0.5
    ),
    "datpp_tiny": dict(
        _PP,
        img_size=224,
        dim_stem=64,
        dims=(64, 128, 256, 512),
        heads=(2, 4, 8, 16),
        depths=(2, 4, 18, 2),
        groups=(1, 2, 4, 8),
        drop_path_rate=0.2,
    ),
    "datpp_small": dict(_PP, **_T, img_size=224, depths=(2, 4, 18, 2), groups=(1, 2, 3, 6), drop_path_rate=0.4),
    "datpp_base": dict(_PP, **_B, img_size=224, depths=(2, 4, 18, 2), groups=(2, 4, 8, 16), drop_path_rate=0.7),
    # Built with 224-sized position tables and run at 384: DAT++ reads its tables in normalised coordinates.
    "datpp_base_384": dict(_PP, **_B, img_size=224, depths=(2, 4, 18, 2), groups=(2, 4, 8, 16), drop_path_rate=0.6),
}
for _cfg in MODEL_CONFIGS.values():
    _cfg["stage_spec"] = stage_spec_for(_cfg["depths"], _cfg["generation"])


def model_config(name: str) -> dict[str, Any]:
    """A copy of the constructor arguments of a registered variant."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown DAT variant {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    return copy.deepcopy(MODEL_CONFIGS[name])


# -- the authors' constructor arguments ---------------------------------------------------------------------------

# Arguments of the authors' DAT that datvit takes as they are.
_DIRECT = {
    "img_size",
    "patch_size",
    "num_classes",
    "expansion",
    "dim_stem",
    "dims",
    "depths",
    "heads",
    "window_sizes",
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "strides",
    "offset_range_factor",
    "stage_spec",
    "groups",
    "use_pes",
    "dwc_pes",
    "no_offs",
    "use_dwc_mlps",
    "use_conv_patches",
    "ksizes",
    "nat_ksizes",
    "use_lpus",
    "in_chans",
}
# Arguments that only matter for block kinds or options datvit does not build, with their inert values.
_INERT = {
    "sr_ratios": None,  # only for 'P' (pyramid) blocks
    "ns_per_pts": None,  # unused by the released models
    "heads_q": None,  # only for QnA blocks
    "ksize_qnas": None,
    "nqs": None,
    "qna_activation": None,
    "deform_groups": None,
    "fixed_pes": False,
    "log_cpb": False,
    "use_cmt_mlps": False,
    "layer_scale_values": -1,
    "local_orf": None,
    "local_kv_sizes": None,
    "offset_pes": False,
    "lower_lr_kvs": None,
    "out_indices": None,
    "use_checkpoint": None,
    "init_cfg": None,
}


def detect_generation(config: Mapping[str, Any]) -> str:
    """'pp' for DAT++ constructor arguments (they carry ``ksizes``/``nat_ksizes``/``use_lpus`` or use N blocks),
    otherwise 'v1'."""
    if any(k in config for k in ("ksizes", "nat_ksizes", "use_lpus", "use_cmt_mlps", "layer_scale_values")):
        return "pp"
    if any("N" in stage for stage in config.get("stage_spec", [])):
        return "pp"
    return "v1"


def translate_authors_config(config: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Map the authors' constructor arguments (their YAML ``MODEL.DAT`` section, upper- or lower-case keys) to
    ``DAT`` arguments. Options datvit does not implement raise ValueError if they are switched on."""
    cfg = {str(k).lower(): v for k, v in dict(config).items()}
    generation = overrides.pop("generation", None) or cfg.pop("generation", None) or detect_generation(cfg)
    out: dict[str, Any] = {"generation": generation}
    for key, value in cfg.items():
        if key in _DIRECT:
            out[key] = value
        elif key in _INERT:
            inert = _INERT[key]
            if inert is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(
                (v > 0 if isinstance(inert, (int, float)) and not isinstance(inert, bool) else bool(v)) for v in values
            ):
                raise ValueError(f"the authors' option {key}={value} is not supported by datvit")
        else:
            warnings.warn(f"ignoring unknown DAT constructor argument {key!r}", stacklevel=3)
    if "depths" in out and "stage_spec" not in out:
        out["stage_spec"] = stage_spec_for(out["depths"], generation)
    out.update(overrides)
    return out
