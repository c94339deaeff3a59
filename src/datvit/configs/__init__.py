"""Configurations shipped with datvit as package data (the demo's ``datvit train`` YAML), read through
``importlib.resources`` so they are found from any working directory and in an installed wheel.

``datvit train -c demo_fashion_mnist`` (or ``-c demo_fashion_mnist.yaml``) names one of them; a path that exists
always wins. Imports nothing of datvit, so every layer may use it."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Optional


def packaged_configs() -> list[str]:
    """Names of the shipped configs (without ``.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def packaged_config(name: str | os.PathLike) -> Optional[Path]:
    """The file of a shipped config given by name (``demo_fashion_mnist`` or ``demo_fashion_mnist.yaml``), or
    None when ``name`` is not one. Wheels install package data as plain files, so the path can be opened."""
    name = os.fspath(name)
    if os.sep in name or (os.altsep and os.altsep in name):
        return None
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in packaged_configs():
        return None
    return Path(str(resources.files(__name__).joinpath(f"{stem}.yaml")))


def resolve_config_path(path: str | os.PathLike) -> str:
    """``path`` when it exists, else the shipped config of that name, else ``path`` unchanged (for the error)."""
    if os.path.exists(path):
        return os.fspath(path)
    found = packaged_config(path)
    return str(found) if found is not None else os.fspath(path)
