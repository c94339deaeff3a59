"""Every released variant has exactly the keys, shapes, dtypes and kinds of the authors' state_dict (the
manifests), built from our registry and from the authors' own constructor arguments."""

from __future__ import annotations

import pytest
import timm
import torch

import datvit
from conftest import VARIANTS, load_manifest


def assert_matches_manifest(model: torch.nn.Module, manifest: dict) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = model.state_dict()
    got = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()]
    expected = [(e["key"], e["shape"], e["dtype"]) for e in manifest["state_dict"]]
    missing = sorted({k for k, *_ in expected} - {k for k, *_ in got})
    unexpected = sorted({k for k, *_ in got} - {k for k, *_ in expected})
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    assert sorted(got) == sorted(expected)
    for e in manifest["state_dict"]:
        assert (e["key"] in params) == (e["kind"] == "param"), e["key"]
        assert (e["key"] in buffers) == (e["kind"] == "buffer"), e["key"]
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    # the checkpoints' buffers; non-persistent ones (the window layout cached for the configured size) are not saved
    assert sum(b.numel() for k, b in buffers.items() if k in state) == manifest["buffer_count"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_registered_variant_matches_manifest(variant):
    manifest = load_manifest(variant)
    model = timm.create_model(variant)
    assert_matches_manifest(model, manifest)
    assert model.pretrained_cfg["input_size"][-1] == manifest["eval_resolution"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_authors_config_matches_manifest(variant):
    manifest = load_manifest(variant)
    model = datvit.from_authors_config(manifest["config"])
    assert_matches_manifest(model, manifest)
    ours = datvit.model_config(variant)
    assert model.generation == ours["generation"]

    # our registry and the authors' arguments agree on everything that shapes the model
    def plain(v):
        return [plain(i) for i in v] if isinstance(v, (list, tuple)) else v

    for key in (
        "dims",
        "depths",
        "heads",
        "groups",
        "strides",
        "stage_spec",
        "window_sizes",
        "img_size",
        "offset_range_factor",
        "use_pes",
        "use_dwc_mlps",
        "use_conv_patches",
        "drop_path_rate",
    ):
        assert plain(ours[key]) == plain(manifest["config"][key]), key


def test_unsupported_authors_options_are_rejected():
    config = dict(load_manifest("dat_tiny")["config"], fixed_pes=[False, False, True, True])
    with pytest.raises(ValueError, match="fixed_pes"):
        datvit.from_authors_config(config)
