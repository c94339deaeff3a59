"""Runs log where researchers look: TensorBoard event files beside summary.csv (train, det, seg alike, one
RunLoggers in the engine) and Weights & Biases in its offline mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from datvit.cli.train import train_layers
from datvit.train import train
from datvit.train.errors import TrainingError
from datvit.train.run_logging import RunLoggers
from train_helpers import TINY_MODEL_ARGS, make_fashion_mnist


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tiny_run(tmp_path: Path, *extra: str) -> dict:
    fm = make_fashion_mnist(tmp_path / "fm", n_train=32, n_test=16)
    argv = ["--data-dir", str(fm), *TINY_MODEL_ARGS, "-b", "8", "--epochs", "2", "--workers", "0"]
    argv += ["--output", str(tmp_path / "runs"), "--experiment", "run", "--no-progress", "--log-interval", "2", *extra]
    return train(train_layers(argv))


def test_tensorboard_events_beside_summary_csv(tmp_path):
    summary = _tiny_run(tmp_path)
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "summary.csv").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    scalars = _scalars(run_dir)
    assert {"train/loss", "train/top1", "train/lr", "epoch/eval_top1", "epoch/train_loss", "epoch/images_per_s"} <= set(
        scalars
    )
    assert [step for step, _ in scalars["epoch/eval_top1"]] == [4, 8]  # the optimizer step of each epoch's end
    rows = (run_dir / "summary.csv").read_text().splitlines()
    top1 = rows[0].split(",").index("eval_top1")
    assert scalars["epoch/eval_top1"][-1][1] == pytest.approx(float(rows[-1].split(",")[top1]), abs=1e-2)


def test_tensorboard_asked_for_but_missing_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TrainingError, match=r"pip install 'datvit\[log\]'"):
        RunLoggers(tmp_path, tensorboard=True, wandb=False, settings={})
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert RunLoggers(tmp_path, tensorboard=None, wandb=False, settings={}).writer is None  # default: quietly off


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    (tmp_path / "wandb_dir").mkdir()
    summary = _tiny_run(tmp_path, "--wandb", "--wandb-project", "datvit-test", "--epochs", "1", "--no-tensorboard")
    run_dir = Path(summary["run_dir"])
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    offline = list((tmp_path / "wandb_dir" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, list((tmp_path / "wandb_dir").rglob("*"))[:10]
    assert list(offline[0].glob("*.wandb"))
    assert not list(run_dir.glob("events.out.tfevents.*"))  # --no-tensorboard


def test_dense_runs_write_events_too(tmp_path):
    from datvit.cli.main import main
    from dense_train_helpers import TINY_SEGMENTER, make_scenes

    scenes = make_scenes(tmp_path, n_train=4, n_val=2)
    argv = ["seg", "train", *TINY_SEGMENTER, "--data-dir", str(scenes), "--epochs", "1", "-b", "2", "--workers", "0"]
    argv += ["--output", str(tmp_path / "runs"), "--experiment", "seg", "--no-progress", "--lr", "1e-3"]
    assert main(argv) == 0
    scalars = _scalars(tmp_path / "runs" / "seg")
    assert {"train/loss", "epoch/eval_mIoU", "epoch/train_loss"} <= set(scalars)
