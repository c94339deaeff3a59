"""Weights for sharing in timm's hub layout: one directory with ``model.safetensors``, ``config.json`` and a model
card ``README.md`` — what timm's ``push_to_hf_hub`` writes, so the same directory (or hub repository) loads
through ``timm.create_model("local-dir:DIR", pretrained=True)`` (``"hf-hub:USER/REPO"`` once pushed), through
transformers' ``AutoModelForImageClassification.from_pretrained(DIR)`` (its TimmWrapper, with
``AutoImageProcessor`` giving timm's preprocessing) and through ``datvit.inference.load_model(DIR)``. timm and
transformers need ``import datvit`` first: it registers the architecture names with timm.

``config.json`` holds timm's keys: ``architecture`` (a registered variant: a preset or custom model is written
as the variant of its generation, ``dat_tiny`` or ``datpp_tiny``, and ``model_args`` rebuild its network),
``num_classes`` and ``label_names`` at the top level, ``num_features``, ``global_pool``, ``model_args`` (the
architecture arguments only: never ``num_classes``, which TimmWrapper passes itself, nor training-only rates such
as ``drop_path_rate``), ``pretrained_cfg`` (input_size, mean, std, crop_pct, crop_mode, interpolation,
first_conv, classifier) — plus a ``datvit`` entry naming the model (``dat_nano``, a custom name) and the
format version. Directories from earlier datvit versions (``datvit.arch`` with the complete constructor
arguments, ``num_classes`` inside ``model_args``) still load through ``load_model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..models.checkpoint import CheckpointError
from ..models.registry import VARIANTS
from ..utils.files import atomic_write_text
from .checkpoint_format import FORMAT_VERSION

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
README_NAME = "README.md"

# DAT arguments that config.json's model_args leave out: the head size is the top-level num_classes (TimmWrapper
# passes num_classes=... next to **model_args, so a second one fails), drop rates only act in training, and where
# the parameters are built is the loader's choice.
NOT_ARCHITECTURE = frozenset({"num_classes", "drop_rate", "attn_drop_rate", "drop_path_rate", "device", "dtype"})
# Switches of how a model runs rather than what it holds, left out at their defaults: timm's features_only
# turns dense_norms on for backbones unless model_args pin it off, reference selects the slow oracle path, and the
# input-size switches keep timm's meaning.
RUNTIME_DEFAULTS = {"dense_norms": False, "reference": False, "strict_img_size": False, "dynamic_img_size": False}

PAPERS = {
    "v1": ("2201.00520", "Vision Transformer with Deformable Attention", "CVPR 2022"),
    "pp": ("2309.01430", "DAT++: Spatially Dynamic Vision Transformer with Deformable Attention", "arXiv 2023"),
}
CITATIONS = {
    "v1": """@inproceedings{xia2022vision,
  title={Vision Transformer with Deformable Attention},
  author={Xia, Zhuofan and Pan, Xuran and Song, Shiji and Li, Li Erran and Huang, Gao},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={4794--4803},
  year={2022}
}""",
    "pp": """@article{xia2023dat,
  title={DAT++: Spatially Dynamic Vision Transformer with Deformable Attention},
  author={Xia, Zhuofan and Pan, Xuran and Song, Shiji and Li, Li Erran and Huang, Gao},
  journal={arXiv preprint arXiv:2309.01430},
  year={2023}
}""",
}
# ImageNet-1k top-1 of the authors' released weights, as the papers report it.
PUBLISHED_TOP1 = {
    "dat_tiny": 82.0,
    "dat_small": 83.7,
    "dat_base": 84.0,
    "dat_base_384": 84.8,
    "datpp_tiny": 83.9,
    "datpp_small": 84.6,
    "datpp_base": 84.9,
    "datpp_base_384": 85.9,
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _dat_defaults() -> dict[str, Any]:
    import inspect

    from ..models.dat import DAT

    return {
        p.name: _jsonable(p.default)
        for p in inspect.signature(DAT.__init__).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def architecture_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments that define the network and its weights (config.json's ``model_args``)."""
    return {
        k: _jsonable(v)
        for k, v in kwargs.items()
        if k not in NOT_ARCHITECTURE and v is not None and not (k in RUNTIME_DEFAULTS and v == RUNTIME_DEFAULTS[k])
    }


def constructor_args(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every DAT argument of the model ``name`` + ``kwargs`` builds: DAT's defaults ← the variant's configuration
    (a registered name) ← ``kwargs``. Written out in full because timm fills what model_args lack from the
    registered variant config.json names, whose values (say datpp_tiny's conv stem) differ from DAT's defaults
    that built a custom model."""
    from ..models.configs import model_config

    return {**_dat_defaults(), **(model_config(name) if name in VARIANTS else {}), **kwargs}


def timm_architecture(name: str, kwargs: Mapping[str, Any]) -> str:
    """The registered timm name config.json gives a model: its own for a released variant, else the variant of
    its generation (``model_args`` set every argument, so timm builds the same network from it)."""
    if name in VARIANTS:
        return name
    return "datpp_tiny" if kwargs.get("generation", "v1") == "pp" else "dat_tiny"


def hub_config(
    arch: Mapping[str, Any],
    data_config: Mapping[str, Any],
    model: torch.nn.Module,
    class_names: Optional[list[str]] = None,
) -> dict[str, Any]:
    """The ``config.json`` dict for a model built from ``arch`` and preprocessed with ``data_config``."""
    from .. import __version__

    model_args = architecture_args(constructor_args(arch["name"], arch["kwargs"]))
    model_args["in_chans"] = int(model.in_chans)  # the stem's weight shape: timm would adapt it otherwise
    pretrained_cfg = {
        "tag": "datvit",
        "custom_load": False,
        "input_size": list(data_config["input_size"]),
        "fixed_input_size": False,
        "interpolation": data_config.get("interpolation", "bicubic"),
        "crop_pct": data_config.get("crop_pct", 0.875),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "num_classes": int(model.num_classes),
        "pool_size": [s // 32 for s in data_config["input_size"][1:]],
        "first_conv": "patch_proj.0",
        "classifier": "cls_head",
    }
    config: dict[str, Any] = {
        "architecture": timm_architecture(arch["name"], arch["kwargs"]),
        "num_classes": int(model.num_classes),
        "num_features": int(model.num_features),
        "global_pool": getattr(model, "global_pool", "avg"),
    }
    if class_names:
        config["label_names"] = list(class_names)
    config["model_args"] = model_args
    config["pretrained_cfg"] = pretrained_cfg
    config["datvit"] = {"model": arch["name"], "format_version": FORMAT_VERSION, "datvit_version": __version__}
    return config


def has_variant_arguments(config: Mapping[str, Any]) -> bool:
    """Whether config.json's ``model_args`` are those of the released variant it names (arguments at DAT's
    defaults aside)."""
    name = (config.get("datvit") or {}).get("model", config.get("architecture"))
    if name not in VARIANTS:
        return False
    defaults = _dat_defaults()

    def explicit(args: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}

    expected = architecture_args(constructor_args(name, {"in_chans": 3}))
    return explicit(config.get("model_args") or {}) == explicit(expected)


def is_authors_variant(config: Mapping[str, Any]) -> bool:
    """Whether config.json describes a released variant as the authors trained it: its name, its architecture
    arguments and the 1000 ImageNet classes (so the papers' top-1 applies to the authors' weights)."""
    return config.get("num_classes") == 1000 and has_variant_arguments(config)


def model_card(
    config: Mapping[str, Any],
    model: torch.nn.Module,
    repo_id: Optional[str] = None,
    macs: Optional[int] = None,
) -> str:
    """The hub model card (``README.md``): YAML front matter (``library_name: timm``, tags, license, the paper),
    a table of parameters, FLOPs and input size (plus the published top-1 for an authors' variant), and how
    to load the model through timm, transformers and datvit. ``repo_id`` names the hub repository in the
    snippets; without it they read the local directory ``DIR``. ``macs``: the model's multiply-adds at its
    input size (``datvit.tools.flops.count_flops(model, size).macs``, which the caller counts: this layer does
    not import ``tools``); without it the card says n/a."""
    from ..models import count_parameters

    name = (config.get("datvit") or {}).get("model") or config["architecture"]
    generation = "pp" if config.get("model_args", {}).get("generation", "v1") == "pp" else "v1"
    arxiv, title, venue = PAPERS[generation]
    family = "DAT++" if generation == "pp" else "DAT"
    size = tuple(config["pretrained_cfg"]["input_size"])
    authors = is_authors_variant(config)
    flops = "n/a" if macs is None else (f"{macs / 1e9:.2f}G" if macs >= 1e8 else f"{macs / 1e6:.1f}M")
    tags = ["image-classification", "timm", "transformers", "datvit", f"arxiv:{arxiv}"]
    front = ["---", "tags:", *[f"- {t}" for t in tags], "library_name: timm", "license: apache-2.0"]
    front.append("pipeline_tag: image-classification")
    if authors:
        front += ["datasets:", "- imagenet-1k"]
    front.append("---")

    rows = [
        (
            "architecture",
            f"`{config['architecture']}`"
            + ("" if has_variant_arguments(config) else " with the `model_args` of `config.json`")
            + (f" (datvit model `{name}`)" if name != config["architecture"] else ""),
        ),
        ("parameters", f"{count_parameters(model) / 1e6:.2f}M"),
        ("FLOPs (multiply-adds, the papers' count)", flops),
        ("input size", f"{size[0]}×{size[1]}×{size[2]} (C×H×W)"),
        ("classes", str(config["num_classes"])),
    ]
    if authors:
        rows.append(("ImageNet-1k top-1 (published, the authors' weights)", f"{PUBLISHED_TOP1[name]}%"))
    table = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]

    ref = repo_id or "DIR"
    timm_ref = f"hf-hub:{repo_id}" if repo_id else "local-dir:DIR"
    datvit_ref = f'load_model(snapshot_download("{repo_id}"))' if repo_id else 'load_model("DIR")'
    datvit_import = "from huggingface_hub import snapshot_download\n" if repo_id else ""
    mode = "L" if size[0] == 1 else "RGB"
    body = f"""
# Model card for {name}

A {family} image classifier ([{title}](https://arxiv.org/abs/{arxiv}), {venue}), written by
[datvit](https://pypi.org/project/datvit/) `datvit convert` in timm's hub layout: `model.safetensors` and a timm
`config.json`.

## Model details

{chr(10).join(table)}

## How to use

`import datvit` registers the DAT architectures with timm; run it before loading through timm or transformers.

```python
import timm
import datvit  # noqa: F401
from PIL import Image

model = timm.create_model("{timm_ref}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
logits = model(transform(Image.open("image.jpg").convert("{mode}"))[None])
```

```python
import datvit  # noqa: F401
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{ref}").eval()
processor = AutoImageProcessor.from_pretrained("{ref}")  # timm's preprocessing
logits = model(**processor(Image.open("image.jpg").convert("{mode}"), return_tensors="pt")).logits
label = model.config.id2label[logits.argmax(-1).item()]
```

```python
{datvit_import}from PIL import Image
from datvit.inference import eval_transform, load_model

loaded = {datvit_ref}
image = Image.open("image.jpg").convert(loaded.image_mode)
probs = loaded.model(eval_transform(loaded.data_config)(image)[None]).softmax(-1)
```

## Citation

```bibtex
{CITATIONS[generation]}
```
"""
    return "\n".join(front) + "\n" + body


def save_hub_directory(
    directory: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    readme: Optional[str] = None,
) -> tuple[Path, Path]:
    """Write ``model.safetensors``, ``config.json`` and, when given, ``README.md`` into ``directory`` (each
    atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    try:
        save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_text(json.dumps(config, indent=2) + "\n", config_path)
    if readme is not None:
        atomic_write_text(readme, directory / README_NAME)
    return weights, config_path


def hub_token(token: Optional[str] = None) -> str:
    """``token``, else the one ``hf auth login`` stored or ``HF_TOKEN``; ``ValueError`` saying how to log in
    when there is none."""
    import huggingface_hub

    token = token or huggingface_hub.get_token()
    if not token:
        raise ValueError(
            "pushing to the hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token"
        )
    return token


def push_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    commit_message: str = "Add DAT model (datvit convert)",
) -> str:
    """Upload a hub directory (``model.safetensors``, ``config.json``, ``README.md``) to the Hugging Face hub
    repository ``repo_id``, creating it when missing; returns the repository's URL. ``token``: else the one
    ``hf auth login`` stored or ``HF_TOKEN``; without any, ``ValueError`` says how to log in."""
    from huggingface_hub import HfApi

    from .. import __version__

    directory = Path(directory)
    token = hub_token(token)
    api = HfApi(token=token, library_name="datvit", library_version=__version__)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(repo, "repo_id", None) or repo_id
    files = [n for n in (WEIGHTS_NAME, CONFIG_NAME, README_NAME) if (directory / n).is_file()]
    api.upload_folder(
        repo_id=repo_id,
        folder_path=directory,
        allow_patterns=files,
        revision=revision,
        commit_message=commit_message,
    )
    return str(repo)


def find_hub_files(path: str | os.PathLike) -> Optional[tuple[Path, Path]]:
    """``(weights, config.json)`` when ``path`` is a hub directory, its ``config.json`` or its
    ``model.safetensors`` with a ``config.json`` beside it; None otherwise."""
    path = Path(path)
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            raise CheckpointError(
                f"{path} is a directory without {CONFIG_NAME}: give a checkpoint file, or a "
                f"directory written by datvit convert ({WEIGHTS_NAME} + {CONFIG_NAME})"
            )
        return path / WEIGHTS_NAME, config
    if path.name == CONFIG_NAME:
        return path.with_name(WEIGHTS_NAME), path
    if path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file():
        return path, path.parent / CONFIG_NAME
    return None


def read_hub_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` checked: a JSON object with ``architecture`` (or datvit's ``arch``) and valid entries."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object (timm's config.json), found {type(config).__name__}")
    if not isinstance(config.get("architecture"), str) and not isinstance(config.get("datvit"), dict):
        raise CheckpointError(f"{path} names no 'architecture' (timm's config.json key)")
    for key, kind in (("model_args", dict), ("pretrained_cfg", dict), ("label_names", list), ("datvit", dict)):
        if key in config and not isinstance(config[key], kind):
            raise CheckpointError(f"{path}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    return config


def arch_from_hub_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``arch`` record a ``config.json`` describes: the model datvit named (``datvit.model``, else timm's
    ``architecture``) with ``model_args`` and the top-level ``num_classes``. A directory from an earlier datvit
    (``datvit.arch`` with the complete constructor arguments) is read from that record."""
    entry = config.get("datvit") or {}
    arch = entry.get("arch")
    if isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("kwargs"), dict):
        return {"name": arch["name"], "kwargs": dict(arch["kwargs"])}
    name = entry.get("model") if isinstance(entry.get("model"), str) else config.get("architecture")
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: config.json names no 'architecture'")
    name = name.split("/")[-1].split(".")[0]  # "timm/dat_tiny.in1k" → "dat_tiny"
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:
        kwargs["num_classes"] = config["num_classes"]
    return {"name": name, "kwargs": kwargs}


def data_config_from_hub_config(config: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    cfg = config.get("pretrained_cfg") or {}
    if "input_size" not in cfg:
        return None
    keys = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")
    return {k: cfg[k] for k in keys if k in cfg}
