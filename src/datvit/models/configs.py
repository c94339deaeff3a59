"""The released variants as plain data (constructor arguments of ``DAT``), and the authors' config translation."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

# The seed article's pattern: stages 1–2 alternate local/shifted windows, stages 3–4 local/deformable (DAT v1);
# DAT++ alternates neighborhood/deformable everywhere except stage 4, which is deformable only.


def _alternate(a: str, b: str, depth: int) -> list[str]:
    return [a if i % 2 == 0 else b for i in range(depth)]


def v1_stage_spec(depths) -> list[list[str]]:
    return [_alternate("L", "S", depths[0]), _alternate("L", "S", depths[1]),
            _alternate("L", "D", depths[2]), _alternate("L", "D", depths[3])]


def pp_stage_spec(depths) -> list[list[str]]:
    return [_alternate("N", "D", depths[0]), _alternate("N", "D", depths[1]),
            _alternate("N", "D", depths[2]), ["D"] * depths[3]]


_V1 = dict(
    generation="v1", patch_size=4, expansion=4, strides=(-1, -1, 1, 1), offset_range_factor=(-1, -1, 2, 2),
    use_pes=(False, False, True, True), ksizes=(9, 7, 5, 3), use_conv_patches=False,
    use_dwc_mlps=(False,) * 4, use_lpus=(False,) * 4,
)
_PP = dict(
    generation="pp", patch_size=4, expansion=4, strides=(8, 4, 2, 1), offset_range_factor=(-1, -1, -1, -1),
    use_pes=(True,) * 4, ksizes=(9, 7, 5, 3), nat_ksizes=(7,) * 4, use_conv_patches=True,
    use_dwc_mlps=(True,) * 4, use_lpus=(True,) * 4, window_sizes=(7,) * 4,
)
_T = dict(dim_stem=96, dims=(96, 192, 384, 768), heads=(3, 6, 12, 24))
_B = dict(dim_stem=128, dims=(128, 256, 512, 1024), heads=(4, 8, 16, 32))

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "dat_tiny": dict(_V1, **_T, img_size=224, depths=(2, 2, 6, 2), groups=(-1, -1, 3, 6), window_sizes=(7,) * 4,
                     drop_path_rate=0.2),
    "dat_small": dict(_V1, **_T, img_size=224, depths=(2, 2, 18, 2), groups=(-1, -1, 3, 6), window_sizes=(7,) * 4,
                      drop_path_rate=0.3),
    "dat_base": dict(_V1, **_B, img_size=224, depths=(2, 2, 18, 2), groups=(-1, -1, 4, 8), window_sizes=(7,) * 4,
                     drop_path_rate=0.5),
    "dat_base_384": dict(_V1, **_B, img_size=384, depths=(2, 2, 18, 2), groups=(-1, -1, 4, 8),
                         window_sizes=(12,) * 4, drop_path_rate=0.5),
    "datpp_tiny": dict(_PP, img_size=224, dim_stem=64, dims=(64, 128, 256, 512), heads=(2, 4, 8, 16),
                       depths=(2, 4, 18, 2), groups=(1, 2, 4, 8), drop_path_rate=0.2),
    "datpp_small": dict(_PP, **_T, img_size=224, depths=(2, 4, 18, 2), groups=(1, 2, 3, 6), drop_path_rate=0.4),
    "datpp_base": dict(_PP, **_B, img_size=224, depths=(2, 4, 18, 2), groups=(2, 4, 8, 16), drop_path_rate=0.7),
    # Built with 224-sized position tables and run at 384: DAT++ reads its tables in normalised coordinates.
    "datpp_base_384": dict(_PP, **_B, img_size=224, depths=(2, 4, 18, 2), groups=(2, 4, 8, 16),
                           drop_path_rate=0.6),
}
for _name, _cfg in MODEL_CONFIGS.items():
    _cfg["stage_spec"] = (v1_stage_spec if _cfg["generation"] == "v1" else pp_stage_spec)(_cfg["depths"])


def model_config(name: str) -> dict[str, Any]:
    """A copy of the constructor arguments of a registered variant."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown DAT variant {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    return copy.deepcopy(MODEL_CONFIGS[name])


# -- the authors' constructor arguments ---------------------------------------------------------------------------

# Arguments of the authors' DAT that datvit takes as they are.
_DIRECT = {
    "img_size", "patch_size", "num_classes", "expansion", "dim_stem", "dims", "depths", "heads", "window_sizes",
    "drop_rate", "attn_drop_rate", "drop_path_rate", "strides", "offset_range_factor", "stage_spec", "groups",
    "use_pes", "dwc_pes", "no_offs", "use_dwc_mlps", "use_conv_patches", "ksizes", "nat_ksizes", "use_lpus",
    "in_chans",
}
# Arguments that only matter for block kinds or options datvit does not build, with their inert values.
_INERT = {
    "sr_ratios": None,            # only for 'P' (pyramid) blocks
    "ns_per_pts": None,           # unused by the released models
    "heads_q": None,              # only for QnA blocks
    "ksize_qnas": None, "nqs": None, "qna_activation": None, "deform_groups": None,
    "fixed_pes": False, "log_cpb": False, "use_cmt_mlps": False, "layer_scale_values": -1,
    "local_orf": None, "local_kv_sizes": None, "offset_pes": False, "lower_lr_kvs": None,
    "out_indices": None, "use_checkpoint": None, "init_cfg": None,
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
            if any((v > 0 if isinstance(inert, (int, float)) and not isinstance(inert, bool) else bool(v))
                   for v in values):
                raise ValueError(f"the authors' option {key}={value} is not supported by datvit")
        else:
            warnings.warn(f"ignoring unknown DAT constructor argument {key!r}", stacklevel=3)
    if "depths" in out and "stage_spec" not in out:
        out["stage_spec"] = (v1_stage_spec if generation == "v1" else pp_stage_spec)(out["depths"])
    out.update(overrides)
    return out
