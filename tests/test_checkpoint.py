"""Loading checkpoints: the authors' .pth (dict with "model" and a pickled config, or bare), through timm's
pretrained path and datvit.load_checkpoint, strictly; clear errors for wrong variants and corrupt files;
resizing to other input sizes; dense-prediction norms; heads of another size."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import datvit
from conftest import load_fixture, reduced_kwargs
from datvit.models import DAT, CheckpointError


class CfgNode(dict):
    """Pickles as ``yacs.config.CfgNode``, the config object the authors pickle into their training checkpoints
    (a dict subclass with its flags in ``__dict__``, as yacs's); yacs itself is not installed."""

    def __init__(self, **items):
        super().__init__(**items)
        self.__dict__["__immutable__"] = False
        self.__dict__["__deprecated_keys__"] = set()


def save_with_yacs_config(obj, path):
    """torch.save ``obj`` while a fake ``yacs.config`` module makes ``CfgNode`` pickle under yacs's name; the
    module is gone again before anything loads the file."""
    import sys
    import types

    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    config.CfgNode, yacs.config = CfgNode, config
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        torch.save(obj, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
        CfgNode.__module__, CfgNode.__qualname__ = __name__, "CfgNode"


@pytest.fixture(scope="module")
def authors_pth(tmp_path_factory):
    """The v1 fixture's weights saved as the authors' training checkpoint (with a pickled yacs config)."""
    config, _, state, tensors = load_fixture("dat")
    path = tmp_path_factory.mktemp("ckpt") / "dat_reduced.pth"
    save_with_yacs_config(
        {
            "model": state,
            "epoch": 299,
            "max_accuracy": 82.0,
            "config": CfgNode(MODEL=CfgNode(TYPE="dat"), DATA={"IMG_SIZE": 224}),
        },
        path,
    )
    return path, tensors


def test_authors_training_checkpoint_reads_without_running_code(authors_pth):
    """The yacs config comes back as an inert dict with its values; no warning, no weights_only=False."""
    import warnings

    path, _ = authors_pth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = datvit.models.read_checkpoint(path)
    assert type(ckpt["config"]).__name__ == "InertConfig"
    assert ckpt["config"]["MODEL"]["TYPE"] == "dat" and ckpt["config"]["DATA"] == {"IMG_SIZE": 224}
    assert ckpt["epoch"] == 299 and "yacs" not in __import__("sys").modules


def test_timm_pretrained_path_loads_authors_file(authors_pth):
    path, tensors = authors_pth
    model = timm.create_model(
        "dat_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **reduced_kwargs("dat")
    )
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tensors["__input__"]), tensors["__logits__"], atol=1e-4, rtol=0)


def test_load_checkpoint_bare_state_dict_and_safetensors(tmp_path):
    _, _, state, tensors = load_fixture("datpp")
    for path in (tmp_path / "bare.pth", tmp_path / "w.safetensors"):
        if path.suffix == ".pth":
            torch.save(state, path)
        else:
            save_file(state, str(path))
        model = datvit.load_checkpoint(DAT(**reduced_kwargs("datpp")), path).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(tensors["__input__"]), tensors["__logits__"], atol=1e-4, rtol=0)


def test_wrong_variant_names_keys(authors_pth):
    path, _ = authors_pth
    with pytest.raises(CheckpointError) as e:
        datvit.load_checkpoint(DAT(**reduced_kwargs("datpp")), path)
    message = str(e.value)
    assert str(path) in message and "missing keys" in message and "unexpected keys" in message
    assert "DAT v1" in message and "DAT++" in message
    deeper = DAT(
        **reduced_kwargs(
            "dat", depths=[2, 2, 4, 2], stage_spec=[["L", "S"], ["L", "S"], ["L", "D", "L", "D"], ["L", "D"]]
        )
    )
    with pytest.raises(CheckpointError, match=r"missing keys \(36\): stages\.2\.layer_norms\.4"):
        datvit.load_checkpoint(deeper, path)
    wider = DAT(**reduced_kwargs("dat", dims=[16, 32, 64, 256], heads=[1, 2, 4, 8]))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        datvit.load_checkpoint(wider, path)


def test_corrupt_and_missing_files(tmp_path, authors_pth):
    path, _ = authors_pth
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="broken.pth"):
        datvit.load_checkpoint(DAT(**reduced_kwargs("dat")), broken)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        datvit.load_checkpoint(DAT(**reduced_kwargs("dat")), garbage)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        datvit.load_checkpoint(DAT(**reduced_kwargs("dat")), tmp_path / "nowhere.pth")
    notes = tmp_path / "notes.pth"
    torch.save({"epoch": 3}, notes)
    with pytest.raises(CheckpointError, match="no state_dict"):
        datvit.load_checkpoint(DAT(**reduced_kwargs("dat")), notes)


def test_other_resolution_resizes_tables_and_rebuilds_buffers(authors_pth):
    """v1 weights built at 224 with 7×7 windows into a model built at 320 with 10×10 windows (as dat_base →
    dat_base_384): tables resized bicubically, size-dependent buffers rebuilt, and the model runs at 320."""
    path, _ = authors_pth
    _, _, state, _ = load_fixture("dat")
    model = DAT(**reduced_kwargs("dat", img_size=320, window_sizes=[10, 10, 10, 10]))
    datvit.load_checkpoint(model, path)
    sd = model.state_dict()
    rpe = state["stages.2.attns.1.rpe_table"]
    assert sd["stages.2.attns.1.rpe_table"].shape == (4, 39, 39)
    torch.testing.assert_close(
        sd["stages.2.attns.1.rpe_table"],
        F.interpolate(rpe[None], size=(39, 39), mode="bicubic", align_corners=False)[0],
    )
    table = state["stages.0.attns.0.relative_position_bias_table"]
    assert sd["stages.0.attns.0.relative_position_bias_table"].shape == (19 * 19, table.shape[1])
    assert sd["stages.0.attns.1.attn_mask"].shape == (64, 100, 100)
    assert torch.equal(
        sd["stages.0.attns.0.relative_position_index"],
        DAT(**reduced_kwargs("dat", img_size=320, window_sizes=[10] * 4)).state_dict()[
            "stages.0.attns.0.relative_position_index"
        ],
    )
    assert torch.isfinite(model.eval()(torch.randn(1, 3, 320, 320))).all()


def test_head_of_another_size_is_reinitialised(authors_pth):
    path, _ = authors_pth
    model = DAT(**reduced_kwargs("dat", num_classes=3))
    with pytest.warns(UserWarning, match="re-initialised"):
        datvit.load_checkpoint(model, path)
    _, _, state, _ = load_fixture("dat")
    torch.testing.assert_close(
        model.state_dict()["stages.3.attns.1.proj_q.weight"], state["stages.3.attns.1.proj_q.weight"]
    )


def test_dense_backbone_norms(tmp_path, authors_pth):
    """features_only builds the four per-stage norms; a classification file leaves them at init, a detection
    backbone file (keys prefixed 'backbone.', with norms, without head) fills them."""
    path, _ = authors_pth
    feats = timm.create_model(
        "dat_tiny",
        features_only=True,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        **reduced_kwargs("dat"),
    )
    assert torch.equal(
        feats.state_dict()["model.norms.2.norm.weight"]
        if "model.norms.2.norm.weight" in feats.state_dict()
        else feats.model.norms[2].norm.weight,
        torch.ones(64),
    )
    _, _, state, _ = load_fixture("dat")
    det = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("cls_")}
    for i, d in enumerate([16, 32, 64, 128]):
        det[f"backbone.norms.{i}.norm.weight"] = torch.full((d,), 2.0)
        det[f"backbone.norms.{i}.norm.bias"] = torch.zeros(d)
    det_path = tmp_path / "det.pth"
    torch.save({"state_dict": det, "meta": {}}, det_path)
    model = DAT(**reduced_kwargs("dat", dense_norms=True, num_classes=0))
    datvit.load_checkpoint(model, det_path)
    assert torch.equal(model.norms[3].norm.weight, torch.full((128,), 2.0))


def test_round_trip_of_our_checkpoint(tmp_path):
    model = DAT(**reduced_kwargs("datpp", num_classes=4))
    path = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict(), "arch": "custom"}, path)
    fresh = datvit.load_checkpoint(DAT(**reduced_kwargs("datpp", num_classes=4)), path)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
