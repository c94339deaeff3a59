"""timm's model API as timm's Swin/ConvNeXt follow it: set_input_size, dynamic_img_size / strict_img_size,
device= / dtype= (building on meta and materialising), and a complete pretrained_cfg for every variant.

Heavier checks run dat_tiny and datpp_tiny at small sizes (32 and 64 pixels); the cfg checks cover all eight
variants without building them."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import get_pretrained_cfg

from conftest import VARIANTS

try:  # timm >= 1.0.31
    from timm.models import get_model_input_config
    from timm.models._manipulate import reinit_non_persistent_buffers
except ImportError:  # older timm: the model's own methods
    get_model_input_config = None

    def reinit_non_persistent_buffers(model):
        model.init_non_persistent_buffers()


import datvit  # noqa: F401  (registers the variants)
from datvit.layers import DeformableAttention, LocalAttention
from datvit.models import load_state_dict_checked, model_config
from datvit.models.scripting import ScriptableDAT

TINY = ["dat_tiny", "datpp_tiny"]


def _create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, persistent or not (position indices, masks, cached window layouts)."""
    return dict(model.named_buffers())


def _assert_same_buffers(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    a, e = _buffers(actual), _buffers(expected)
    assert a.keys() == e.keys()
    for k in e:
        assert a[k].dtype == e[k].dtype and a[k].device == e[k].device, k
        assert torch.equal(a[k], e[k]), k


# -- pretrained_cfg ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_pretrained_cfg_is_complete(name):
    cfg = get_pretrained_cfg(name)
    generation = model_config(name)["generation"]
    size = 384 if name.endswith("_384") else 224
    assert cfg.origin_url == "https://github.com/LeapLabTHU/DAT"
    assert cfg.paper_ids == {"v1": "arXiv:2201.00520", "pp": "arXiv:2309.01430"}[generation]
    assert cfg.paper_name and cfg.license == "apache-2.0"
    assert cfg.hf_hub_id is None and not cfg.url  # no hub copies: nothing for timm to download
    assert cfg.input_size == cfg.test_input_size == (3, size, size)
    config = model_config(name)
    min_side = config["patch_size"] * 2 ** (len(config["dims"]) - 1)  # DAT.min_input_size
    assert cfg.min_input_size == (3, min_side, min_side)
    assert cfg.pool_size == (size // 32, size // 32) and not cfg.fixed_input_size
    assert cfg.crop_pct == (0.875 if size == 224 else 1.0) and cfg.interpolation == "bicubic"
    assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.std == timm.data.IMAGENET_DEFAULT_STD
    assert (cfg.first_conv, cfg.classifier, cfg.num_classes, cfg.custom_load) == (
        "patch_proj.0",
        "cls_head",
        1000,
        True,
    )


@pytest.mark.parametrize("name", TINY)
def test_pretrained_cfg_names_real_modules(name):
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert cfg["min_input_size"][1] == model.min_input_size


# -- dynamic_img_size / strict_img_size ---------------------------------------------------------------------------


def test_default_and_dynamic_take_any_size():
    default = _create("dat_tiny", img_size=32)
    dynamic = _create("dat_tiny", img_size=32, dynamic_img_size=True)
    both = _create("dat_tiny", img_size=32, dynamic_img_size=True, strict_img_size=True)  # dynamic wins, as in timm
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        expected = default(x)
        for model in (dynamic, both):
            assert model.dynamic_img_size and not model.strict_img_size
            assert torch.equal(model(x), expected)
    assert default.dynamic_img_size and not default.strict_img_size
    if get_model_input_config is not None:
        assert not get_model_input_config(default)["fixed_input_size"]


def test_strict_img_size_refuses_other_sizes():
    model = _create("dat_tiny", img_size=32, strict_img_size=True)
    assert model.strict_img_size and not model.dynamic_img_size
    if get_model_input_config is not None:
        assert get_model_input_config(model)["fixed_input_size"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
        with pytest.raises(ValueError, match=r"input 32×64 differs from the model's img_size 32×32"):
            model(torch.randn(1, 3, 32, 64))
        model.set_input_size(img_size=64)  # the strict size follows the model's size
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        with pytest.raises(ValueError, match=r"input 32×32 differs from the model's img_size 64×64"):
            model(torch.randn(1, 3, 32, 32))
    scriptable = ScriptableDAT(model)  # what torch.jit.script compiles checks the same
    scriptable.check_input(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"input 32×64 differs from the model's img_size 64×64"):
        scriptable.check_input(torch.randn(1, 3, 32, 64))


# -- set_input_size ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_set_input_size_equals_a_model_built_and_loaded_at_that_size(name):
    original = _create(name, img_size=32)
    resized = copy.deepcopy(original)
    # DAT++ has no L/S windows; DAT's maps 16 and 8 are padded to windows of 5 and 3 (masks with padding)
    windows = [5, 3, 3, 2] if name.startswith("dat_") else None
    resized.set_input_size(img_size=64, window_size=windows)

    rebuilt = _create(name, img_size=64, **({"window_sizes": windows} if windows else {}))
    load_state_dict_checked(rebuilt, original.state_dict(), "original")  # what load_checkpoint does
    assert resized.img_size == 64
    assert [s.config for s in resized.stages] == [s.config for s in rebuilt.stages]
    own, ref = resized.state_dict(), rebuilt.state_dict()
    assert own.keys() == ref.keys()
    assert all(torch.equal(own[k], ref[k]) for k in ref)
    _assert_same_buffers(resized, rebuilt)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(resized(x), rebuilt(x))
        resized.set_input_size()  # at the current size: nothing changes
        assert torch.equal(resized(x), rebuilt(x))
    if get_model_input_config is not None:
        assert get_model_input_config(resized)["input_size"] == (3, 64, 64)


def test_set_input_size_refuses_bad_sizes_before_changing_anything():
    model = _create("dat_tiny", img_size=32)
    before = copy.deepcopy(model.state_dict())
    for kwargs, match in (
        (dict(img_size=(32, 48)), "square"),
        (dict(img_size=16), "too small"),
        (dict(window_size=[7, 7]), "4 stages"),
        (dict(window_size=1), "stage 1 is too small"),  # a shifted window needs at least 2
    ):
        with pytest.raises(ValueError, match=match):
            model.set_input_size(**kwargs)
    after = model.state_dict()
    assert model.img_size == 32 and all(torch.equal(after[k], before[k]) for k in before)


def test_set_input_size_keeps_trainability():
    model = _create("dat_tiny", img_size=32, num_classes=4)
    frozen = model.stages[2].attns[1].conv_offset[0].weight
    frozen.requires_grad_(False)
    model.set_input_size(img_size=64, window_size=6)
    tables = [m for m in model.modules() if isinstance(m, (LocalAttention, DeformableAttention))]
    assert all(m.fmap_size for m in tables)
    assert model.stages[0].attns[0].relative_position_bias_table.shape == (11 * 11, 3)
    assert not model.stages[2].attns[1].conv_offset[0].weight.requires_grad
    model.train()
    loss = F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    assert model.stages[0].attns[0].relative_position_bias_table.grad is not None


# -- device= / dtype= ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_meta_model_materialises_and_trains(name):
    model = timm.create_model(name, img_size=32, num_classes=10, device="meta")
    assert {t.device.type for t in list(model.parameters()) + list(model.buffers())} == {"meta"}
    model.to_empty(device="cpu")
    model.init_weights()
    _assert_same_buffers(model, _create(name, img_size=32, num_classes=10))
    for p in model.parameters():
        assert torch.isfinite(p).all()
    for m in model.modules():
        if isinstance(m, DeformableAttention):
            assert not m.conv_offset[3].weight.any()  # zero offsets at init
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(F.cross_entropy(model(x), y))


def test_meta_model_loads_a_checkpoint_after_its_buffers_are_rebuilt():
    trained = _create("dat_tiny", img_size=32)
    model = timm.create_model("dat_tiny", img_size=32, device="meta")
    model.to_empty(device="cpu")
    reinit_non_persistent_buffers(model)  # DAT.init_non_persistent_buffers
    load_state_dict_checked(model, trained.state_dict(), "trained")
    model.eval()
    _assert_same_buffers(model, trained)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))


def test_dtype_builds_in_that_dtype():
    model = _create("dat_tiny", img_size=32, dtype=torch.bfloat16)
    reference = _create("dat_tiny", img_size=32).to(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    _assert_same_buffers(model, reference)
    assert model.stages[0].attns[1].attn_mask.dtype == torch.bfloat16
    assert model.stages[0].attns[0].relative_position_index.dtype == torch.long
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
