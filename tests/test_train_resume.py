"""A run killed with SIGKILL mid-epoch and resumed with ``--resume auto`` ends with the same weights, EMA and
optimizer state as an uninterrupted run — with the full ImageNet recipe's randomness on (RandAugment, random
erasing, Mixup/CutMix, drop path, EMA) and a corrupt image in the data."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from train_helpers import (
    TINY_MODEL_ARGS,
    checkpoint_position,
    load_weights,
    make_image_folder,
    max_abs_diff,
    run_datvit,
    slow_step_driver,
    start_driver,
)

# Slows every optimizer step so the parent can kill the run between a step checkpoint and the epoch's end.
DRIVER = slow_step_driver(0.25)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, workers):
    data = make_image_folder(tmp_path / "data", per_class=8, val_per_class=2)
    out = tmp_path / "out"
    common = [
        "train",
        "--data-dir",
        str(data),
        *TINY_MODEL_ARGS,
        "-b",
        "4",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--lr",
        "1e-3",
        "--drop-path",
        "0.2",
        "--model-ema",
        "--model-ema-decay",
        "0.9",
        "--workers",
        str(workers),
        "--checkpoint-interval",
        "2",
        "--output",
        str(out),
        "--no-progress",
        "--seed",
        "7",
    ]
    full = run_datvit(common + ["--experiment", "full"])
    assert full.returncode == 0, full.stderr

    proc = start_driver(tmp_path, DRIVER, [*common, "--experiment", "killed"])
    last = out / "killed" / "last.pth"
    position = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        position = checkpoint_position(last) if last.exists() else None
        # a step checkpoint of the second epoch: the kill lands mid-epoch, after an epoch end and a step save
        if position and position[0] == 1 and position[1] > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    epoch, batch, step = checkpoint_position(last)
    assert epoch == 1 and 0 < batch < 6, (epoch, batch)  # last.pth is a complete mid-epoch checkpoint

    resumed = run_datvit(common + ["--experiment", "killed", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout

    a, b = out / "full" / "last.pth", out / "killed" / "last.pth"
    weights_diff = max_abs_diff(load_weights(a), load_weights(b))
    ema_diff = max_abs_diff(load_weights(a, "model_ema"), load_weights(b, "model_ema"))
    assert weights_diff <= 1e-6 and ema_diff <= 1e-6, (weights_diff, ema_diff)
    ca = torch.load(a, map_location="cpu", weights_only=True)
    cb = torch.load(b, map_location="cpu", weights_only=True)
    assert ca["step"] == cb["step"] == 12
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.allclose(sa["exp_avg"], sb["exp_avg"], atol=1e-6)
    # the epoch rows (losses, accuracies) agree too, so summary.csv is the same
    for ra, rb in zip(ca["history"]["epochs"], cb["history"]["epochs"]):
        for key in ("train_loss", "eval_loss", "eval_top1"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    assert (out / "killed" / "summary.csv").read_text().count("\n") == 3
