"""``StageConfig``: the per-stage configuration ``DAT`` builds once from the authors' flat per-stage lists and hands
to each ``DATStage``; ``stage_spec_for``, the one builder of the papers' block patterns."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from conftest import VARIANTS, reduced_kwargs
from datvit.layers import (
    ConvMlp,
    DeformableAttention,
    LocalAttention,
    Mlp,
    NeighborhoodAttention2D,
    ShiftWindowAttention,
)
from datvit.models import (
    DAT,
    DATStage,
    StageConfig,
    model_config,
    stage_spec_for,
    translate_authors_config,
)
from datvit.models.configs import PER_STAGE_ARGUMENTS

DEFAULTS = {name: p.default for name, p in inspect.signature(DAT.__init__).parameters.items()}
KINDS = {"L": LocalAttention, "S": ShiftWindowAttention, "D": DeformableAttention, "N": NeighborhoodAttention2D}


@pytest.mark.parametrize("variant", VARIANTS)
def test_stage_configs_are_the_flat_arguments(variant):
    args = {**DEFAULTS, **model_config(variant)}
    with torch.device("meta"):  # no memory, no init: only the structure is looked at
        model = DAT(**model_config(variant))
    depths = args["depths"]
    rates = torch.linspace(0, args["drop_path_rate"], sum(depths)).tolist()
    assert len(model.stages) == len(args["dims"])
    for i, stage in enumerate(model.stages):
        cfg = stage.config
        assert isinstance(cfg, StageConfig)
        for name, field in PER_STAGE_ARGUMENTS.items():
            want = args[name][i]
            assert getattr(cfg, field) == (tuple(want) if name == "stage_spec" else want), (i, name)
        assert cfg.dim == args["dims"][i] and cfg.dim_in == (args["dim_stem"] if i == 0 else args["dims"][i])
        assert cfg.fmap_size == args["img_size"] // args["patch_size"] // 2**i
        assert cfg.generation == args["generation"] and cfg.expansion == args["expansion"]
        assert cfg.drop_path == pytest.approx(rates[sum(depths[:i]) : sum(depths[: i + 1])])

        # what the stage's modules were built with
        assert stage.depth == cfg.depth and stage.stage_spec == list(cfg.stage_spec)
        assert isinstance(stage.proj, nn.Conv2d if cfg.dim_in != cfg.dim else nn.Identity)
        for kind, attn in zip(cfg.stage_spec, stage.attns):
            assert type(attn) is KINDS[kind]
            assert attn.heads == cfg.heads
            if kind in "LS":
                assert attn.window_size == cfg.window_size and attn.fmap_size == cfg.fmap_size
            elif kind == "D":
                assert (attn.groups, attn.stride, attn.ksize) == (cfg.groups, cfg.stride, cfg.ksize)
                assert attn.offset_range_factor == cfg.offset_range_factor and attn.use_pe == cfg.use_pe
                assert attn.fmap_size == cfg.fmap_size and attn.generation == cfg.generation
            else:
                assert attn.kernel_size == cfg.nat_ksize
        assert all(type(m) is (ConvMlp if cfg.use_dwc_mlp else Mlp) for m in stage.mlps)
        assert all(isinstance(m, nn.Conv2d) == cfg.use_lpu for m in stage.local_perception_units)
        probs = [m.drop_prob if isinstance(m, DropPath) else 0.0 for m in stage.drop_path]
        assert probs == pytest.approx(list(cfg.drop_path))


@pytest.mark.parametrize("name", list(PER_STAGE_ARGUMENTS))
def test_a_per_stage_list_of_the_wrong_length_is_named(name):
    kwargs = reduced_kwargs("datpp")
    value = kwargs.get(name, DEFAULTS[name])
    with pytest.raises(ValueError, match=f"^{name} has 3 entries but there are 4 stages"):
        DAT(**{**kwargs, name: list(value)[:3]})


def test_stage_config_checks_itself_and_is_frozen():
    cfg = DAT(**reduced_kwargs("dat")).stages[2].config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3
    with pytest.raises(ValueError, match="letters for depth"):
        dataclasses.replace(cfg, depth=cfg.depth + 1)
    with pytest.raises(ValueError, match="unknown block kind 'X'"):
        dataclasses.replace(cfg, stage_spec=("X",) * cfg.depth)
    torch.manual_seed(0)
    stage = DATStage(config=cfg)  # a stage alone, from its config
    assert stage.config is cfg and len(stage.attns) == cfg.depth


def test_stage_spec_for_is_the_papers_pattern():
    assert stage_spec_for([2, 2, 6, 2], "v1") == [["L", "S"], ["L", "S"], ["L", "D"] * 3, ["L", "D"]]
    assert stage_spec_for([2, 4, 3, 2], "pp") == [["N", "D"], ["N", "D"] * 2, ["N", "D", "N"], ["D", "D"]]
    for variant in VARIANTS:
        cfg = model_config(variant)
        assert cfg["stage_spec"] == stage_spec_for(cfg["depths"], cfg["generation"])
    # the authors' arguments without a stage_spec get the same pattern
    assert translate_authors_config({"depths": [1, 1, 3, 1], "nat_ksizes": [7] * 4})["stage_spec"] == [
        ["N"],
        ["N"],
        ["N", "D", "N"],
        ["D"],
    ]
    with pytest.raises(ValueError, match="generation must be"):
        stage_spec_for([2, 2, 2, 2], "v2")
