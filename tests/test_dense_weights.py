"""load_backbone_weights: classification checkpoints and the authors' dense (mmdet/mmseg) layout, strict keys."""

from __future__ import annotations

import pytest
import timm
import torch

import datvit
from datvit.dense import BackboneConfig, DenseBackbone, build_detector, build_segmenter, load_backbone_weights
from datvit.models import DAT
from dense_helpers import TINY_PP, TINY_V1, tiny_backbone, tiny_detector, tiny_segmenter


def _classification_state(generation_kwargs: dict, model: str, **overrides) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = DAT(**{**datvit.model_config(model), **generation_kwargs, **overrides}, num_classes=7)
    return net.state_dict()


def _dense_state(out_indices, seed: int = 2) -> dict[str, torch.Tensor]:
    """The authors' dense layout built from their key structure: backbone keys + norms.{i} for out_indices."""
    torch.manual_seed(seed)
    bb = DenseBackbone(tiny_backbone("datpp_tiny", out_indices=out_indices))
    state = {}
    for k, v in bb.dat.state_dict().items():
        state[f"backbone.{k}"] = torch.randn_like(v) if k.startswith("norms.") else v
    return state


def _same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_classification_checkpoint_loads_into_backbone(tmp_path):
    state = _classification_state(TINY_PP, "datpp_tiny")
    assert (
        "cls_head.weight" in state
        and "cls_norm.norm.weight" in state
        and not any(k.startswith("norms.") for k in state)
    )
    path = tmp_path / "authors_cls.pth"
    torch.save({"model": state, "epoch": 300}, path)
    bb = DenseBackbone(tiny_backbone("datpp_tiny"))
    init_norm = bb.dat.norms[2].norm.weight.clone()
    report = load_backbone_weights(bb, path)
    own = bb.dat.state_dict()
    shared = [k for k in own if not k.startswith("norms.")]
    assert _same(own, state, shared) and torch.equal(own["norms.2.norm.weight"], init_norm)
    assert report.layout == "classification" and set(report.ignored) == {
        "cls_head.weight",
        "cls_head.bias",
        "cls_norm.norm.weight",
        "cls_norm.norm.bias",
    }
    assert len(report.kept_init) == 8 and report.loaded == len(shared)
    # the same file given in the config is loaded at build time
    built = DenseBackbone(tiny_backbone("datpp_tiny", weights=str(path)))
    assert _same(built.dat.state_dict(), state, shared)


def test_v1_tables_are_resized_to_another_input_size(tmp_path):
    state = _classification_state(TINY_V1, "dat_tiny", img_size=64)
    path = tmp_path / "v1_64.pth"
    torch.save({"model": state}, path)
    bb = DenseBackbone(tiny_backbone("dat_tiny"))  # built at img_size 32
    report = load_backbone_weights(bb, path)
    assert report.resized and all(k.endswith(("rpe_table", "relative_position_bias_table")) for k in report.resized)


def test_authors_dense_checkpoints_load_strictly(tmp_path):
    # RetinaNet: norms 1–3 only, neck and head keys besides the backbone, mmcv's meta
    state = _dense_state((1, 2, 3))
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)
    state["bbox_head.retina_cls.weight"] = torch.zeros(720, 256, 3, 3)
    path = tmp_path / "retinanet_datpp_tiny.pth"
    torch.save({"meta": {"mmdet_version": "2.26.0", "epoch": 12}, "state_dict": state}, path)
    retina = build_detector(tiny_detector("retinanet", "datpp_tiny"))
    report = load_backbone_weights(retina, path)
    own = retina.backbone.body.dat.state_dict()
    assert _same(own, {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}, own)
    assert report.layout == "dense (mmdet/mmseg)" and not report.kept_init
    assert set(report.ignored) == {"neck.lateral_convs.0.conv.weight", "bbox_head.retina_cls.weight"}

    # the same file into a Mask R-CNN (norms 0–3): norms.0 keeps its init, with a warning
    mask = build_detector(tiny_detector("mask_rcnn", "datpp_tiny"))
    with pytest.warns(UserWarning, match="norms.0"):
        report = load_backbone_weights(mask, path)
    assert report.kept_init == ["norms.0.norm.weight", "norms.0.norm.bias"]

    # UperNet (mmseg): backbone + decode_head + auxiliary_head
    seg_state = _dense_state((0, 1, 2, 3), seed=3)
    seg_state["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
    seg_state["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    seg_path = tmp_path / "upernet_datpp_tiny.pth"
    torch.save({"meta": {}, "state_dict": seg_state}, seg_path)
    net = build_segmenter(tiny_segmenter("upernet", "datpp_tiny"))
    load_backbone_weights(net, seg_path)
    torch.testing.assert_close(net.dat.norms[0].norm.weight, seg_state["backbone.norms.0.norm.weight"])


def test_mismatching_files_raise_one_line_naming_the_keys(tmp_path):
    state = _classification_state(dict(TINY_PP, dims=[16, 32, 64, 96], heads=[1, 2, 4, 6]), "datpp_tiny")
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(datvit.CheckpointError) as info:
        load_backbone_weights(DenseBackbone(tiny_backbone("datpp_tiny")), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "shape mismatches" in message
    assert "dims [16, 32, 64, 96]" in message  # what the file holds

    v1 = tmp_path / "v1.pth"
    torch.save({"model": _classification_state(TINY_V1, "dat_tiny")}, v1)
    with pytest.raises(datvit.CheckpointError, match="missing .*unexpected"):
        load_backbone_weights(DenseBackbone(tiny_backbone("datpp_tiny")), v1)


def test_cnn_backbone_loads_a_timm_classification_checkpoint(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=5).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    bb = DenseBackbone(BackboneConfig("resnet18"))
    report = load_backbone_weights(bb, path)
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(bb.body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_backbone_of_a_datvit_detector_checkpoint_fine_tunes_a_segmenter(tmp_path):
    torch.manual_seed(4)
    det = build_detector(tiny_detector("mask_rcnn", "datpp_tiny"))
    path = tmp_path / "last.pth"
    torch.save({"model": det.state_dict(), "epoch": 3}, path)
    seg = build_segmenter(tiny_segmenter("upernet", "datpp_tiny"))
    report = load_backbone_weights(seg, path)
    assert report.layout == "datvit dense model" and any(k.startswith("backbone.fpn.") for k in report.ignored)
    ref = det.backbone.body.dat.state_dict()
    assert _same(seg.dat.state_dict(), ref, ref)
