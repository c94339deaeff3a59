"""datvit.tools.flops and ``datvit flops``: the papers' FLOPs (fvcore convention) from a trace of the model."""

from __future__ import annotations

import json
import math

import pytest
import torch

import datvit
from conftest import load_manifest
from datvit.cli.main import main
from datvit.tools.flops import ABLATION, PUBLISHED, build_on_meta, count_ablation, count_flops, count_variant_flops


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_variant_within_one_percent_of_the_paper_and_exact_params(name):
    report = count_variant_flops(name)
    published = PUBLISHED[name][1]
    assert abs(report.gflops / published - 1) < 0.01, (name, report.gflops, published)
    assert report.params == load_manifest(name)["param_count"]
    assert report.params == sum(r.params for r in report.rows)
    assert [r.name for r in report.rows] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert all(r.macs > 0 for r in report.rows)


def test_ablation_reproduces_the_authors_code_to_the_third_decimal():
    results = count_ablation()
    assert [e.d_stages for e, _ in results] == [e.d_stages for e in ABLATION]
    for entry, report in results:
        assert round(report.params / 1e6, 3) == entry.authors_params_m, entry
        assert round(report.gflops, 3) == entry.authors_gflops, entry


def _tiny_neighborhood_model():
    return dict(
        generation="pp",
        img_size=64,
        dim_stem=16,
        dims=[16, 32, 64, 128],
        depths=[2, 2, 2, 2],
        heads=[1, 2, 4, 8],
        stage_spec=[["N", "D"]] * 3 + [["D", "D"]],
        groups=[1, 2, 2, 4],
        strides=[8, 4, 2, 1],
        offset_range_factor=[-1] * 4,
        use_pes=[True] * 4,
        ksizes=[9, 7, 5, 3],
        nat_ksizes=[7] * 4,
        use_conv_patches=True,
        use_dwc_mlps=[True] * 4,
        use_lpus=[True] * 4,
        window_sizes=[7] * 4,
        num_classes=10,
    )


def test_counts_by_hand_for_one_deformable_block_and_neighborhood_attention_at_k_squared():
    """Stage 4 of a tiny DAT++ (two D blocks, 2×2 map at 64×64 input) counted by the spec's formula, and the
    N blocks of stage 1 at 49 keys per query (the fast path's tiles would give it the whole 16×16 map)."""
    model = build_on_meta(_tiny_neighborhood_model())
    report = count_flops(model, (3, 64, 64))
    stage4 = report.rows[4]
    C, H, W, heads, G, k = 128, 2, 2, 8, 4, 3
    HW, Ns, cg = H * W, H * W, C // G
    per_block = (
        4 * HW * C * C  # proj_q, proj_k, proj_v, proj_out (1×1 convs)
        + 2 * HW * Ns * C  # q·kᵀ and attn·v
        + G * (Ns * cg * k * k + Ns * cg * 2)  # offset network: depthwise k×k and 1×1 conv to 2 channels
        + 5 * G * Ns * cg  # its LayerNorm
        + 4 * C * Ns
        + 4 * heads * HW * Ns  # bilinear sampling of x and of the position bias
        + 2 * 5 * HW * C  # the block's two LayerNorms
        + 2 * HW * C * 4 * C
        + HW * 4 * C * 9  # MLP: two 1×1 convs and its 3×3 depthwise conv
        + HW * C * 9  # local perception unit
    )
    down = HW * 64 * C * 9 + 5 * HW * C  # 3×3 stride-2 conv into stage 4 and its LayerNorm
    assert stage4.macs == 2 * per_block + down, (stage4.macs, 2 * per_block + down)
    assert stage4.detail == "2×2 D×2"

    fast = count_flops(model, (3, 64, 64), path="fast")
    # N block of stage 1: 16×16 map, 1 head of 16 channels, q·kᵀ and attn·v. Reference: 49 keys per query.
    # Fast path: 3×3 tiles of 7×7 queries (padded to 21×21), each against a (7 + 6)² = 169-key halo.
    reference_attention, tiled_attention = 2 * 16 * 16 * 49 * 16, 2 * 21 * 21 * 169 * 16
    assert fast.rows[1].macs - report.rows[1].macs == tiled_attention - reference_attention
    assert fast.rows[4].macs == stage4.macs  # deformable attention: same on both paths


def test_real_model_untouched_and_same_count_as_meta():
    torch.manual_seed(0)
    model = datvit.DAT(**_tiny_neighborhood_model()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = count_flops(model, (3, 64, 80))
    assert model.training and not model.reference
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report == count_flops(build_on_meta(_tiny_neighborhood_model()), (3, 64, 80))
    with pytest.raises(ValueError, match="below this model's minimum of 32"):
        count_flops(model, (3, 16, 64))


def test_other_models_are_counted_too():
    import timm

    model = timm.create_model("resnet18", num_classes=10)
    report = count_flops(model, (3, 64, 64))
    # resnet18 at 64×64: 1.82G at 224 scales by (64/224)²; fvcore counts its batch norms 1 per element
    assert math.isclose(report.gflops, 1.82 * (64 / 224) ** 2, rel_tol=0.03)
    assert report.params == sum(p.numel() for p in model.parameters())

    class ReadsValues(torch.nn.Module):  # .item() cannot run on meta: traced for real instead
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x.flatten(1)[:, :8]) * (1.0 if x.sum().item() >= 0 else -1.0)

    assert count_flops(ReadsValues(), (1, 4, 4)).macs == 8 * 4


def test_cli_tables_json_and_errors(capsys, tmp_path):
    assert main(["flops", "--model", "datpp_tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [3, 224, 224] and data["published"] == {"params_m": 24, "gflops": 4.3}
    assert abs(data["gflops"] - 4.288) < 1e-3 and len(data["rows"]) == 6
    assert main(["flops", "--model", "dat_base_384"]) == 0
    out = capsys.readouterr().out
    assert "384×384" in out and "49.772G" in out and "stage 3   24×24 LD×9" in out
    config = tmp_path / "custom.yaml"
    config.write_text("dims: [32, 64, 128, 256]\nheads: [1, 2, 4, 8]\ngroups: [-1, -1, 2, 4]\ndim_stem: 32\n")
    assert main(["flops", "--model", "dat_tiny", "--model-config", str(config), "--img-size", "96", "128"]) == 0
    assert "3×96×128" in capsys.readouterr().out
    assert main(["flops", "--model", "dat_tiny", "--img-size", "16"]) == 2
    assert "below this model's minimum" in capsys.readouterr().err
    assert main(["flops", "--model", "dat_tiny", "--model-kwargs", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["flops", "--ablation", "--model", "dat_tiny"]) == 2
