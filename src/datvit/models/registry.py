"""timm registration of the eight released variants, so ``timm.create_model("dat_tiny")`` works after
``import datvit``, with pretrained configs as the papers evaluate (ImageNet mean/std, bicubic, crop 0.875)."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import fit_state_dict
from .configs import MODEL_CONFIGS, model_config, translate_authors_config
from .dat import DAT

# The authors publish their weights on their own pages (linked from ORIGIN_URL), not on the Hugging Face Hub, and
# datvit has no hub repositories: hf_hub_id stays None, so timm never tries a download that cannot succeed.
# ``pretrained=True`` takes a local copy through ``pretrained_cfg_overlay=dict(file=...)``; a hub copy of the
# authors' weights would go in hf_hub_id (timm's "<organisation>/<name>.<tag>" convention, e.g. "timm/" + name).
ORIGIN_URL = "https://github.com/LeapLabTHU/DAT"
MIN_INPUT_SIZE = (3, 32, 32)  # patch 4 × three downsamplings: every stage keeps at least one pixel
_PAPERS = {
    "v1": dict(paper_ids="arXiv:2201.00520", paper_name="Vision Transformer with Deformable Attention"),
    "pp": dict(
        paper_ids="arXiv:2309.01430",
        paper_name="DAT++: Spatially Dynamic Vision Transformer with Deformable Attention",
    ),
}


def _cfg(generation: str, input_size: int = 224, **kwargs: Any) -> dict[str, Any]:
    return dict(
        url="",
        hf_hub_id=None,
        num_classes=1000,
        input_size=(3, input_size, input_size),
        test_input_size=(3, input_size, input_size),  # the papers evaluate at the training size
        min_input_size=MIN_INPUT_SIZE,
        pool_size=(input_size // 32,) * 2,
        crop_pct=0.875 if input_size == 224 else 1.0,
        interpolation="bicubic",
        fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_proj.0",
        classifier="cls_head",
        license="apache-2.0",
        origin_url=ORIGIN_URL,
        **_PAPERS[generation],
        custom_load=True,
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        "dat_tiny.in1k": _cfg("v1"),
        "dat_small.in1k": _cfg("v1"),
        "dat_base.in1k": _cfg("v1"),
        "dat_base_384.in1k": _cfg("v1", 384),
        "datpp_tiny.in1k": _cfg("pp"),
        "datpp_small.in1k": _cfg("pp"),
        "datpp_base.in1k": _cfg("pp"),
        "datpp_base_384.in1k": _cfg("pp", 384),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> DAT:
    if kwargs.get("features_only"):
        kwargs.setdefault("dense_norms", True)
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file"):
        # timm resets custom_load when a file is given; keep it so the file goes through datvit.load_checkpoint,
        # which reads the authors' training checkpoints (they pickle a config object) and resizes tables.
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    model_args = {**model_config(variant), **kwargs}
    return build_model_with_cfg(
        DAT,
        variant,
        pretrained,
        pretrained_filter_fn=fit_state_dict,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **model_args,
    )


@register_model
def dat_tiny(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT-T (v1): 28.3M params, 4.6 GFLOPs, 82.0% ImageNet top-1."""
    return _create("dat_tiny", pretrained, **kwargs)


@register_model
def dat_small(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT-S (v1): 49.7M params, 9.0 GFLOPs, 83.7%."""
    return _create("dat_small", pretrained, **kwargs)


@register_model
def dat_base(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT-B (v1): 87.9M params, 15.8 GFLOPs, 84.0%."""
    return _create("dat_base", pretrained, **kwargs)


@register_model
def dat_base_384(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT-B at 384×384 with 12×12 windows (v1): 88.2M params, 49.8 GFLOPs, 84.8%."""
    return _create("dat_base_384", pretrained, **kwargs)


@register_model
def datpp_tiny(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT++-T: 24.0M params, 4.3 GFLOPs, 83.9%."""
    return _create("datpp_tiny", pretrained, **kwargs)


@register_model
def datpp_small(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT++-S: 53.1M params, 9.4 GFLOPs, 84.6%."""
    return _create("datpp_small", pretrained, **kwargs)


@register_model
def datpp_base(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT++-B: 93.7M params, 16.6 GFLOPs, 84.9%."""
    return _create("datpp_base", pretrained, **kwargs)


@register_model
def datpp_base_384(pretrained: bool = False, **kwargs: Any) -> DAT:
    """DAT++-B evaluated at 384×384 (tables built at 224): 93.7M params, 49.7 GFLOPs, 85.9%."""
    return _create("datpp_base_384", pretrained, **kwargs)


VARIANTS = tuple(MODEL_CONFIGS)


def from_authors_config(config: dict[str, Any], **overrides: Any) -> DAT:
    """Build a model from the authors' constructor arguments (e.g. the ``config`` of a manifest or fixture, or the
    ``MODEL.DAT`` section of their YAML files); ``overrides`` are ``DAT`` arguments that win."""
    return DAT(**translate_authors_config(config, **overrides))
