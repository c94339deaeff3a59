"""datvit.tools.deformable_points and ``datvit visualize``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.cli.main import main
from datvit.models.factory import build_model, resolve_model_kwargs
from datvit.tools import collect_deformable_points


def _nano(**kw):
    torch.manual_seed(0)
    return build_model("dat_nano", resolve_model_kwargs("dat_nano", None, None, num_classes=10, in_chans=1, **kw))


def test_points_per_d_block_in_image_coordinates():
    model = _nano()
    logits, points = collect_deformable_points(model, torch.randn(1, 32, 40))
    assert logits.shape == (1, 10)
    assert [(p.stage, p.block) for p in points] == [(2, 1), (3, 1)]  # dat_nano: stages L-S, L-S, L-D, L-D
    for p in points:
        assert p.sampled.shape == p.reference.shape and p.sampled.shape[-1] == 2
        ref = p.reference.reshape(-1, 2)
        assert (ref[:, 0] >= 0).all() and (ref[:, 0] <= 40).all() and (ref[:, 1] >= 0).all() and (ref[:, 1] <= 32).all()
        # the offset network's last layer starts at zero: the keys are sampled at the reference points
        np.testing.assert_allclose(p.sampled, p.reference, atol=1e-5)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "conv_offset"):
                m.conv_offset[-1].weight.normal_(std=0.1)
    _, moved = collect_deformable_points(model, torch.randn(1, 32, 40))
    assert max(np.abs(p.sampled - p.reference).max() for p in moved) > 0.1


def test_no_d_blocks_is_a_clear_error():
    model = _nano()
    model_without = build_model(
        "dat_nano",
        dict(resolve_model_kwargs("dat_nano", None, None, num_classes=10, in_chans=1), stage_spec=[["L", "S"]] * 4),
    )
    with pytest.raises(ValueError, match="no deformable"):
        collect_deformable_points(model_without, torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="one image"):
        collect_deformable_points(model, torch.randn(2, 1, 32, 32))


def test_cli_writes_png_and_rejects_unreadable_images(tmp_path, capsys):
    ckpt = tmp_path / "nano.pth"
    torch.save(_nano().state_dict(), ckpt)
    img = tmp_path / "item.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "points.png"
    assert (
        main(
            [
                "visualize",
                "--model",
                "dat_nano",
                "--checkpoint",
                str(ckpt),
                "--image",
                str(img),
                "--img-size",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 200
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert (
        main(["visualize", "--model", "dat_nano", "--checkpoint", str(ckpt), "--image", str(bad), "--img-size", "32"])
        == 2
    )
    assert "cannot read image" in capsys.readouterr().err
