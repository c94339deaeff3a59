"""Atomic checkpoint files, the last/best/history set, RNG capture, and what a checkpoint holds."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch

from datvit.cli.main import main
from datvit.train.checkpointing import CheckpointManager, capture_rng_state, find_auto_resume, restore_rng_state
from datvit.utils.files import atomic_save
from train_helpers import TINY_MODEL_ARGS, make_image_folder

REQUIRED_KEYS = {
    "model",
    "model_ema",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "rng",
    "args",
    "class_names",
    "arch",
    "data_config",
    "batch_in_epoch",
    "history",
}


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"v": torch.tensor(1)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"v": torch.tensor(2), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_manager_keeps_last_best_and_history(tmp_path):
    output = tmp_path / "runs"
    tmp_path = output / "exp"
    manager = CheckpointManager(tmp_path, hist=2)
    for epoch in range(1, 5):
        manager.save({"epoch": epoch}, epoch_end=epoch, is_best=epoch == 2)
    manager.save({"epoch": 4, "mid": True})  # a step checkpoint only replaces last.pth
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pth", "checkpoint-3.pth", "checkpoint-4.pth", "last.pth"]
    assert torch.load(tmp_path / "best.pth", weights_only=True) == {"epoch": 2}
    assert torch.load(tmp_path / "checkpoint-4.pth", weights_only=True) == {"epoch": 4}
    assert torch.load(tmp_path / "last.pth", weights_only=True) == {"epoch": 4, "mid": True}
    assert find_auto_resume(output, "exp") == tmp_path / "last.pth"
    assert find_auto_resume(output, None) == tmp_path / "last.pth"
    assert find_auto_resume(output, "absent") is None


def test_rng_state_roundtrip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny in-process training run (2 epochs) shared by the tests below."""
    root = tmp_path_factory.mktemp("run")
    data = make_image_folder(root / "data", per_class=6, val_per_class=2)
    code = main(
        [
            "train",
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "-b",
            "4",
            "--epochs",
            "2",
            "--workers",
            "0",
            "--output",
            str(root / "out"),
            "--experiment",
            "tiny",
            "--no-progress",
            "--checkpoint-hist",
            "1",
        ]
    )
    assert code == 0
    return root / "out" / "tiny", data


def test_checkpoint_contents(trained_run):
    run_dir, _ = trained_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a datvit checkpoint needs no unsafe unpickling
        ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert REQUIRED_KEYS <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["batch_in_epoch"] == 0 and ckpt["step"] == 2 * (19 // 4)
    assert ckpt["class_names"] == ["cat", "dog", "fish"]
    assert ckpt["arch"]["name"] == "dat_tiny" and ckpt["arch"]["kwargs"]["dims"] == [16, 32, 64, 128]
    assert ckpt["args"]["model_ema"] is True and ckpt["model_ema"] is not None  # the §5 recipe keeps an EMA
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["data_config"]["input_size"] == [3, 32, 32] and ckpt["data_config"]["crop_pct"] == 0.875
    assert ckpt["corrupt_files"][0][0].endswith("zz_broken.jpg")
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["best.pth", "checkpoint-2.pth", "last.pth"]


def test_finished_run_resume_auto_is_a_no_op(trained_run, capsys):
    run_dir, data = trained_run
    before = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    code = main(
        [
            "train",
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "-b",
            "4",
            "--epochs",
            "2",
            "--workers",
            "0",
            "--output",
            str(run_dir.parent),
            "--experiment",
            "tiny",
            "--resume",
            "auto",
            "--no-progress",
        ]
    )
    assert code == 0 and "resumed" in capsys.readouterr().out
    after = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_new_run_never_overwrites_an_existing_one(trained_run, capsys):
    run_dir, data = trained_run
    code = main(
        [
            "train",
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "-b",
            "4",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--output",
            str(run_dir.parent),
            "--experiment",
            "tiny",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir.parent / "tiny-1" / "last.pth").exists()


def test_fine_tuning_on_fewer_classes_reinitialises_the_head(trained_run, tmp_path):
    run_dir, _ = trained_run
    data2 = tmp_path / "two"
    make_image_folder(data2, per_class=4, val_per_class=1, corrupt=False)
    for split in ("train", "val"):
        for f in (data2 / split / "fish").iterdir():
            f.unlink()
        (data2 / split / "fish").rmdir()
    with pytest.warns(UserWarning, match="3 classes, the model 2; the head is re-initialised"):
        code = main(
            [
                "train",
                "--data-dir",
                str(data2),
                *TINY_MODEL_ARGS,
                "-b",
                "4",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--output",
                str(tmp_path / "o"),
                "--experiment",
                "ft",
                "--no-progress",
                "--initial-checkpoint",
                str(run_dir / "best.pth"),
            ]
        )
    assert code == 0
    head = torch.load(tmp_path / "o" / "ft" / "last.pth", weights_only=True)["model"]["cls_head.weight"]
    assert head.shape[0] == 2


def test_resume_from_a_non_checkpoint_is_a_clear_error(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    bogus = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, bogus)
    code = main(
        [
            "train",
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "-b",
            "2",
            "--workers",
            "0",
            "--output",
            str(tmp_path / "o"),
            "--resume",
            str(bogus),
            "--no-progress",
        ]
    )
    assert code == 2 and "not a datvit training checkpoint" in capsys.readouterr().err
