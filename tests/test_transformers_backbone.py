"""DAT and DAT++ as the backbone of transformers' Mask2Former (``TimmBackboneConfig``), at a non-square input size:
the backbone comes from a ``datvit convert`` directory (``local-dir:DIR``, whose ``model_args`` make it small
here), its weights load through ``TimmBackbone.from_pretrained``, and one forward and backward step gives a finite
loss and finite gradients in every backbone parameter. Tiny configurations keep it to seconds on a CPU."""

from __future__ import annotations

import pytest
import timm
import torch

from datvit.inference import hub_config, save_hub_directory
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs
from test_hub import TINY_PP_KWARGS
from train_helpers import TINY_MODEL_KWARGS

transformers = pytest.importorskip("transformers")
pytest.importorskip("scipy")  # Mask2Former's loss matches queries to masks with scipy

pytestmark = pytest.mark.slow  # seconds of Mask2Former on 2 cores: left to the full suite, not `make test-fast`

HEIGHT, WIDTH = 224, 288  # not square: timm's Swin-T refuses any input but 224×224 as a Mask2Former backbone


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the network: huggingface_hub read HF_HUB_OFFLINE when timm imported it, so its
    constant is set too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def backbone_directory(tmp_path, generation):
    """A converted tiny DAT (v1) or DAT++ classifier built for 224×224 inputs."""
    overrides = {**(TINY_PP_KWARGS if generation == "pp" else TINY_MODEL_KWARGS), "img_size": 224}
    kwargs = resolve_model_kwargs("custom", None, overrides, num_classes=10)
    torch.manual_seed(0)
    model = build_model("custom", kwargs).eval()
    data = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    directory = tmp_path / f"dat_{generation}"
    save_hub_directory(directory, model.state_dict(), hub_config(arch_record("custom", kwargs), data, model))
    return directory


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_mask2former_with_a_dat_backbone_at_a_non_square_size(tmp_path, generation):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackbone, TimmBackboneConfig

    directory = backbone_directory(tmp_path, generation)
    config = Mask2FormerConfig(
        backbone_config=TimmBackboneConfig(backbone=f"local-dir:{directory}", out_indices=(0, 1, 2, 3)),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=4,
        num_labels=3,
        train_num_points=256,
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config)
    encoder = model.model.pixel_level_module.encoder
    assert encoder.channels == [16, 32, 64, 128]
    # the converted weights: TimmBackbone.from_pretrained reads the directory, its state_dict fits the encoder
    pretrained = TimmBackbone.from_pretrained(f"local-dir:{directory}", out_indices=(0, 1, 2, 3)).eval()
    encoder.load_state_dict(pretrained.state_dict())
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    reference = timm.create_model(
        f"local-dir:{directory}", pretrained=True, features_only=True, out_indices=(0, 1, 2, 3)
    )
    reference.eval()
    with torch.no_grad():
        maps = pretrained(x).feature_maps
    assert [tuple(m.shape[2:]) for m in maps] == [(56, 72), (28, 36), (14, 18), (7, 9)]
    for a, b in zip(maps, reference(x), strict=True):
        torch.testing.assert_close(a, b)

    model.train()
    masks = [(torch.rand(2, HEIGHT, WIDTH) > 0.5).float()]
    out = model(pixel_values=x, mask_labels=masks, class_labels=[torch.tensor([0, 2])])
    assert out.masks_queries_logits.shape == (1, 4, HEIGHT // 4, WIDTH // 4)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
