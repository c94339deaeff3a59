"""Shared test helpers: the authors' reference data and small model configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REFERENCE_DIR = Path(__file__).parent / "reference"
VARIANTS = ["dat_tiny", "dat_small", "dat_base", "dat_base_384",
            "datpp_tiny", "datpp_small", "datpp_base", "datpp_base_384"]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def load_fixture(family: str):
    """(config, generation, state_dict, tensors) of ``fixture_<family>_reduced.safetensors``."""
    path = REFERENCE_DIR / f"fixture_{family}_reduced.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state = {k: v for k, v in tensors.items() if not k.startswith("__")}
    return json.loads(meta["config"]), meta["generation"], state, tensors


def load_manifest(variant: str) -> dict:
    return json.loads((REFERENCE_DIR / f"manifest_{variant}.json").read_text())


def reduced_kwargs(family: str, **overrides) -> dict:
    """DAT kwargs of the fixtures' reduced models (every block kind, dims 16…128)."""
    import datvit.models as m

    config, _, _, _ = load_fixture(family)
    kwargs = m.translate_authors_config(config)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="session")
def dat_fixture():
    return load_fixture("dat")


@pytest.fixture(scope="session")
def datpp_fixture():
    return load_fixture("datpp")


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "") -> None:
    """max|actual − expected| ≤ tol · max(1, max|expected|): an absolute tolerance for O(1) tensors that scales
    with tensors whose entries are large (float32 keeps ~7 significant digits whatever the magnitude)."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol:g} × {scale:.3g}"
