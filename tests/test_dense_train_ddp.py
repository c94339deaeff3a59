"""torchrun with 2 CPU processes (gloo) trains a segmenter to the weights one process reaches over the same global
batch, evaluates on its shards with the confusion matrices merged (the same mIoU as one process), and only rank 0
prints and writes.

Semantic FPN rather than UperNet: smp's UperNet decoder has BatchNorm, whose statistics are per process without
SyncBatchNorm (which has no CPU kernel), so its DDP run is not the single-process run; smp's FPN uses GroupNorm.
Decoder dropout off, no rescaling and 64×64 "crops" of the 64×64 scenes: every pixel is labelled, the same count
per image, so the mean of the ranks' mean losses is the global mean (32×32 crops leave 1×1 maps at stride 32,
whose GroupNorm turns rounding differences into different weights). Flips and photometric distortion stay on —
they are seeded per sample. SGD for the reason tests/test_train_ddp.py gives."""

from __future__ import annotations

from dense_train_helpers import TINY_BACKBONE, make_scenes
from train_helpers import load_weights, max_abs_diff, single_and_ddp_checkpoints


def test_two_process_ddp_segmentation_equals_single_process_global_batch(tmp_path):
    data = make_scenes(tmp_path, n_train=8, n_val=3)
    out = tmp_path / "out"
    common = [
        "seg",
        "train",
        "--data-dir",
        str(data),
        "--preset",
        "upernet_dat_nano_scenes",
        "--segmenter",
        "fpn",
        *TINY_BACKBONE,
        "--head-kwargs",
        "decoder_channels=32",
        "fpn_channels=32",
        "dropout=0.0",
        "--crop-size",
        "64",
        "--img-scale",
        "64",
        "64",
        "--aug-kwargs",
        "ratio_range=[1.0,1.0]",
        "--epochs",
        "2",
        "--opt",
        "sgd",
        "--lr",
        "0.01",
        "--warmup-iters",
        "0",
        "--drop-path",
        "0",
        "--workers",
        "0",
        "--output",
        str(out),
        "--no-progress",
        "--seed",
        "3",
    ]
    ckpt_single, ckpt_ddp, ddp = single_and_ddp_checkpoints(common, out, 4, 2)
    assert ckpt_single["step"] == ckpt_ddp["step"] == 2 * (8 // 4)
    assert ckpt_ddp["data_state"]["world_size"] == 2
    moved = max_abs_diff(ckpt_single["model"], load_weights(out / "single" / "checkpoint-1.pth"))
    assert moved > 1e-4  # training did change the weights
    assert max_abs_diff(ckpt_single["model"], ckpt_ddp["model"]) < 1e-5
    for rs, rd in zip(ckpt_single["history"]["epochs"], ckpt_ddp["history"]["epochs"]):
        assert abs(rs["train_loss"] - rd["train_loss"]) < 1e-5  # averaged over both ranks
        assert abs(rs["eval_mIoU"] - rd["eval_mIoU"]) < 1e-4  # 3 val images: 2 on rank 0, 1 on rank 1
        assert abs(rs["eval_loss"] - rd["eval_loss"]) < 1e-5
    assert ddp.stdout.count("training fpn") == 1 and ddp.stdout.count("epoch 2/2") == 1  # rank 1 is silent
    assert sorted(p.name for p in (out / "ddp").glob("*.pth")) == [
        "best.pth",
        "checkpoint-1.pth",
        "checkpoint-2.pth",
        "last.pth",
    ]
