"""What a run leaves behind and prints: summary.csv, plots, args.yaml, progress, the corrupt-file count."""

from __future__ import annotations

import pytest
import torch
import yaml
from PIL import Image

from datvit.cli.main import main
from datvit.train.metrics import SUMMARY_COLUMNS, read_summary
from train_helpers import TINY_MODEL_ARGS, make_fashion_mnist, make_image_folder


def test_folder_run_writes_summary_plots_args_and_reports_corrupt_files(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=6, val_per_class=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 2, "batch_size": 4, "workers": 0, "log_interval": 1}))
    code = main(
        [
            "train",
            "-c",
            str(cfg),
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "--output",
            str(tmp_path / "out"),
            "--experiment",
            "run",
            "--checkpoint-interval",
            "2",
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    run = tmp_path / "out" / "run"
    rows = read_summary(run / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert tuple(rows[0])[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    assert all(0 <= float(r["eval_top1"]) <= 100 and float(r["images/s"]) > 0 and float(r["lr"]) > 0 for r in rows)
    for name in ("loss.png", "accuracy.png", "lr.png"):
        with Image.open(run / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["batch_size"] == 4 and args["opt"] == "adamw"
    assert args["dataset"] == "folder" and args["lr"] == pytest.approx(1e-3 * 4 / 1024)
    assert out.count("epoch 1/2  train_loss") == 1 and out.count("epoch 2/2  train_loss") == 1
    assert "top1" in out and "img/s" in out
    assert "skipped unreadable image" in err and "zz_broken.jpg" in err
    assert "1 unreadable image file(s) were skipped" in err
    assert "zz_broken.jpg" in (run / "corrupt_files.txt").read_text()
    assert "it/s" in err or "img_s" in err  # a progress bar was drawn
    steps = torch.load(run / "last.pth", weights_only=True)["history"]["steps"]
    assert len(steps) >= 8 and all({"loss", "lr", "epoch"} <= set(s) for s in steps)


def test_fashion_mnist_from_data_dir_trains_single_channel(tmp_path, capsys):
    root = make_fashion_mnist(tmp_path / "fm", n_train=40, n_test=20)
    code = main(
        [
            "train",
            "--data-dir",
            str(root),
            "--model",
            "dat_nano",
            "--model-kwargs",
            "dims=[8,16,32,64]",
            "dim_stem=8",
            "depths=[1,1,2,1]",
            "-b",
            "8",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--output",
            str(tmp_path / "out"),
            "--experiment",
            "fm",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ckpt = torch.load(tmp_path / "out" / "fm" / "last.pth", weights_only=True)
    assert ckpt["args"]["dataset"] == "fashion_mnist" and ckpt["args"]["in_chans"] == 1
    assert ckpt["model"]["patch_proj.0.weight"].shape[1] == 1
    assert ckpt["class_names"][9] == "Ankle boot"
    assert ckpt["history"]["epochs"][0]["eval_top1"] is not None  # evaluated on the t10k images
