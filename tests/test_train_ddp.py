"""torchrun with 2 CPU processes (gloo) reaches the same weights as one process over the same global batch, and
only rank 0 prints and writes. Augmentation stays on: it is seeded per sample, so it does not depend on which
rank loads a sample; drop path and Mixup (per-rank randomness) are off.

SGD rather than AdamW: Adam divides by the root of the squared gradient, which turns float rounding noise in
gradients that are zero in exact arithmetic (the key projection's bias cannot change a softmax) into lr-sized
steps, so with Adam the two runs agree in function (same losses) but not in those inert weights."""

from __future__ import annotations

from train_helpers import TINY_MODEL_ARGS, load_weights, make_image_folder, max_abs_diff, single_and_ddp_checkpoints


def test_two_process_ddp_equals_single_process_global_batch(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, val_per_class=3, corrupt=False)
    out = tmp_path / "out"
    common = [
        "train",
        "--data-dir",
        str(data),
        *TINY_MODEL_ARGS,
        "--epochs",
        "2",
        "--opt",
        "sgd",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "0",
        "--drop-path",
        "0",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--model-ema",
        "--model-ema-decay",
        "0.9",
        "--workers",
        "0",
        "--output",
        str(out),
        "--no-progress",
        "--seed",
        "3",
    ]
    ckpt_single, ckpt_ddp, ddp = single_and_ddp_checkpoints(common, out, 8, 4)
    assert ckpt_single["step"] == ckpt_ddp["step"] == 2 * (24 // 8)
    assert ckpt_ddp["data_state"]["world_size"] == 2
    diff = max_abs_diff(ckpt_single["model"], ckpt_ddp["model"])
    moved = max_abs_diff(ckpt_single["model"], load_weights(out / "single" / "checkpoint-1.pth"))
    assert moved > 1e-4  # training did change the weights
    assert diff < 1e-6, diff
    assert max_abs_diff(ckpt_single["model_ema"], ckpt_ddp["model_ema"]) < 1e-6
    # evaluation is sharded over the ranks and summed: the same metrics as one process
    for rs, rd in zip(ckpt_single["history"]["epochs"], ckpt_ddp["history"]["epochs"]):
        assert abs(rs["eval_top1"] - rd["eval_top1"]) < 1e-6
        assert abs(rs["eval_loss"] - rd["eval_loss"]) < 1e-5
        assert abs(rs["train_loss"] - rd["train_loss"]) < 1e-5  # averaged over both ranks
    # rank 1 is silent: every line of the run appears once
    assert ddp.stdout.count("training dat_tiny") == 1
    assert ddp.stdout.count("epoch 2/2") == 1
    assert sorted(p.name for p in (out / "ddp").glob("*.pth")) == [
        "best.pth",
        "checkpoint-1.pth",
        "checkpoint-2.pth",
        "last.pth",
    ]
