"""datvit.dense models: DenseBackbone, the three torchvision detectors and the two smp segmenters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datvit.dense import (
    DENSE_PRESETS,
    BackboneConfig,
    DenseBackbone,
    DetectorConfig,
    SegmenterConfig,
    build_detector,
    build_segmenter,
    dense_preset,
    segmentation_loss,
)
from dense_helpers import TINY_PP, detection_batch, tiny_backbone, tiny_detector, tiny_segmenter


@pytest.mark.parametrize(
    "kind,model",
    [("mask_rcnn", "dat_tiny"), ("faster_rcnn", "datpp_tiny"), ("retinanet", "dat_tiny"), ("mask_rcnn", "datpp_tiny")],
)
def test_detector_train_and_eval_on_mixed_size_batch(kind, model):
    torch.manual_seed(0)
    net = build_detector(tiny_detector(kind, model))
    images, targets = detection_batch(((61, 83), (50, 45)))  # odd sizes, one image without objects
    net.train()
    losses = net(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    body = net.backbone.body.dat
    assert body.patch_proj[0].weight.grad is not None and body.patch_proj[0].weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        out = net(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert o["boxes"].shape[1] == 4 and o["labels"].shape == o["scores"].shape
        if kind == "mask_rcnn":
            assert o["masks"].shape[1:] == (1, *img.shape[-2:])


def test_mask_rcnn_fpn_has_conv_p6_on_c5_and_retinanet_p3_to_p7_without_relu():
    torch.manual_seed(0)
    mask = build_detector(tiny_detector("mask_rcnn")).eval()
    x = torch.randn(1, 3, 64, 96)
    feats = mask.backbone(x)
    assert list(feats) == ["0", "1", "2", "3", "p6"]
    c = mask.backbone.body(x)
    expected_p6 = mask.backbone.fpn.extra_blocks.convs[0](c["3"])  # conv on C5, not a max-pool of P5
    torch.testing.assert_close(feats["p6"], expected_p6)
    assert [f.shape[-1] for f in feats.values()] == [24, 12, 6, 3, 2]

    retina = build_detector(tiny_detector("retinanet")).eval()
    feats = retina.backbone(x)
    assert [f.shape[-1] for f in feats.values()] == [12, 6, 3, 2, 1]  # strides 8..128
    p7 = retina.backbone.fpn.extra_blocks.convs[1](feats["p6"])
    torch.testing.assert_close(feats["p7"], p7)  # no ReLU before P7 (mmdet)
    assert retina.anchor_generator.sizes[0] == (32, 40, 51)  # 4 × stride 8 × 2^(k/3)


def test_backbone_out_indices_norms_frozen_stages_and_checkpointing():
    bb = DenseBackbone(tiny_backbone("datpp_tiny", out_indices=(1, 2, 3)))
    keys = bb.dat.state_dict().keys()
    assert {k for k in keys if k.startswith("norms.")} == {
        f"norms.{i}.norm.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    }  # as the authors' RetinaNet
    assert bb.out_channels == TINY_PP["dims"][1:] and bb.strides == [8, 16, 32]
    assert [m.shape[1] for m in bb(torch.randn(1, 3, 64, 64)).values()] == TINY_PP["dims"][1:]

    frozen = DenseBackbone(tiny_backbone("datpp_tiny", frozen_stages=2))
    frozen.train()
    assert not any(p.requires_grad for p in frozen.dat.patch_proj.parameters())
    assert not any(p.requires_grad for p in frozen.dat.stages[1].parameters())
    assert all(p.requires_grad for p in frozen.dat.stages[2].parameters())
    assert not frozen.dat.stages[0].training and frozen.dat.stages[2].training

    cnn = DenseBackbone(BackboneConfig("resnet18", frozen_stages=1))
    assert not cnn.body.conv1.weight.requires_grad and not cnn.body.layer1[0].conv1.weight.requires_grad
    assert cnn.body.layer2[0].conv1.weight.requires_grad and cnn.strides == [4, 8, 16, 32]
    cnn.train()
    assert not cnn.body.bn1.training

    torch.manual_seed(0)
    plain = DenseBackbone(tiny_backbone("datpp_tiny"))
    ckpt = DenseBackbone(tiny_backbone("datpp_tiny", grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for net in (plain, ckpt):
        net.train()
        sum(m.square().mean() for m in net(x).values()).backward()
        grads.append(
            net.dat.stages[2].mlps[0].fc1.weight.grad
            if hasattr(net.dat.stages[2].mlps[0], "fc1")
            else next(net.dat.stages[2].mlps[0].parameters()).grad
        )
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_detector_refuses_bad_targets_with_one_line():
    net = build_detector(tiny_detector("faster_rcnn"))
    images, targets = detection_batch()
    net.train()
    bad = [dict(targets[0], boxes=torch.tensor([[5.0, 5.0, 5.0, 20.0], [1.0, 1.0, 9.0, 9.0]])), targets[1]]
    with pytest.raises(ValueError, match="degenerate"):
        net(images, bad)
    bad = [dict(targets[0], labels=torch.tensor([0, 1])), targets[1]]
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        net(images, bad)


@pytest.mark.parametrize("kind,model", [("upernet", "dat_tiny"), ("fpn", "datpp_tiny"), ("upernet", "resnet18")])
def test_segmenter_train_and_eval(kind, model):
    torch.manual_seed(0)
    net = build_segmenter(tiny_segmenter(kind, model))
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 4, (2, 64, 96))
    y[0, :4] = 255
    net.train()
    out = net(x)
    if kind == "upernet":
        logits, aux = out
        assert aux.shape == logits.shape == (2, 4, 64, 96)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 64, 96) and net.aux_head is None
    loss = segmentation_loss(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    net.eval()
    assert net(x).shape == (2, 4, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 3, 60, 96))


def test_upernet_normalises_dat_features_once():
    """smp 0.6's UPerNet puts a LayerNorm2d on every encoder feature; with DAT's per-stage norms that would
    normalise twice, so smp's are Identity for DAT encoders and stay for CNN encoders."""
    dat = build_segmenter(tiny_segmenter("upernet"))
    assert all(isinstance(n, torch.nn.Identity) for n in dat.net.decoder.feature_norms)
    assert sum(k.startswith("norms.") for k in dat.dat.state_dict()) == 8
    cnn = build_segmenter(tiny_segmenter("upernet", "resnet18"))
    assert all(isinstance(n, torch.nn.LayerNorm) for n in cnn.net.decoder.feature_norms)
    assert dat.aux_head.conv[0].in_channels == 64  # stage 3 of the tiny config (dims[2])
    # what the decoder sees is exactly the backbone's normalised stage output
    x = torch.randn(1, 3, 64, 64)
    dat.eval()
    _, maps = dat.dat.forward_intermediates(x)
    feats = dat.net.encoder(x)
    torch.testing.assert_close(feats[2], maps[0])
    torch.testing.assert_close(
        F.layer_norm(maps[3].permute(0, 2, 3, 1), (128,)).mean(), torch.tensor(0.0), atol=1e-5, rtol=0
    )


def test_presets_follow_the_authors_configs():
    mask = DENSE_PRESETS["mask_rcnn_datpp_tiny_3x"]
    assert (mask.kind, mask.backbone.model, mask.backbone.drop_path_rate, mask.fpn_channels) == (
        "mask_rcnn",
        "datpp_tiny",
        0.3,
        256,
    )
    assert mask.rpn_post_nms_top_n_train == 1000 and mask.backbone.grad_checkpointing
    retina = DENSE_PRESETS["retinanet_datpp_tiny_1x"]
    assert retina.backbone.out_indices == (1, 2, 3) and retina.resolved().anchor_scale == 4.0
    up = DENSE_PRESETS["upernet_datpp_tiny_160k"].resolved()
    assert (up.decoder_channels, up.aux_head, up.aux_weight, up.num_classes, up.backbone.drop_path_rate) == (
        512,
        True,
        0.4,
        150,
        0.3,
    )
    fpn = DENSE_PRESETS["fpn_datpp_tiny_80k"].resolved()
    assert (fpn.decoder_channels, fpn.aux_head, fpn.backbone.drop_path_rate) == (128, False, 0.4)
    demo = dense_preset("mask_rcnn_dat_nano_scenes", backbone={"frozen_stages": 0})
    assert demo.backbone.frozen_stages == 0 and demo.backbone.model_kwargs["patch_size"] == 4
    with pytest.raises(ValueError, match="kind"):
        DetectorConfig("yolo")
    with pytest.raises(ValueError, match="out_indices"):
        BackboneConfig(out_indices=(3, 1))
    with pytest.raises(ValueError, match="four stages"):
        SegmenterConfig("upernet", BackboneConfig(out_indices=(1, 2, 3)))


def test_demo_dat_backbone_has_dat_nano_size():
    bb = DenseBackbone(DENSE_PRESETS["mask_rcnn_dat_nano_scenes"].backbone)
    n = sum(p.numel() for p in bb.parameters())
    assert 2.0e6 < n < 2.6e6, n  # dat_nano's 2.3M without the classifier, plus the four output norms


def test_the_dense_package_loads_its_parts_on_first_use():
    """``datvit.dense`` names every part once (``__all__``, the lazy map, the static imports agree), resolves each
    on first use, and without the dense extra the parsers still build and a part that needs it names the extra."""
    import ast
    import inspect
    import subprocess
    import sys

    import datvit.dense as dense

    assert sorted(dense.__all__) == sorted(dense._EXPORTS)
    tree = ast.parse(inspect.getsource(dense))
    static = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for a in node.names
    }
    assert static == set(dense.__all__)
    for name in dense.__all__:
        assert getattr(dense, name) is getattr(
            __import__(f"datvit.dense.{dense._EXPORTS[name]}", fromlist=[name]), name
        )
    script = (
        "import sys\n"
        "sys.modules['segmentation_models_pytorch'] = None\n"
        "sys.modules['pycocotools'] = None\n"
        "from datvit.cli.main import build_parser\n"
        "build_parser().parse_args(['det', 'eval', '--checkpoint', 'c'])\n"
        "import datvit.dense\n"
        "try:\n"
        "    datvit.dense.build_segmenter\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'datvit[dense]'" in out.stdout
