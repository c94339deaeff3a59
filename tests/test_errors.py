"""User mistakes end in one line ``datvit <command>: error: ...`` naming the file or argument, with exit status 2
(usage) or 1 (runtime failure); ``datvit --debug`` / ``DATVIT_DEBUG=1`` show the traceback instead."""

from __future__ import annotations

import errno
import os

import pytest
import timm
import torch

import datvit  # noqa: F401  (registers the variants)
from datvit.cli._errors import run_with_user_errors
from datvit.cli.main import main
from datvit.train.preemption import RunInterrupted
from datvit.utils.files import FileWriteError
from train_helpers import TINY_MODEL_ARGS, TINY_MODEL_KWARGS, make_fashion_mnist, make_image_folder


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.setenv("DATVIT_CPU_ALLOCATOR", "system")  # main() would tune the allocator of pytest itself
    monkeypatch.setenv("DATVIT_DEBUG", "")  # recorded, so the DATVIT_DEBUG that `main --debug` sets is undone
    monkeypatch.delenv("DATVIT_DEBUG")


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"datvit {command}: error: "), err
    assert not any(line.startswith("Traceback") for line in err)
    return err[-1]


@pytest.mark.parametrize("name", ["dat_tiny", "datpp_tiny"])
def test_too_small_img_size_is_refused_at_construction_and_forward(name):
    with pytest.raises(ValueError, match="img_size 16 is too small.*at least 32"):
        timm.create_model(name, img_size=16)
    model = timm.create_model(name, img_size=32, num_classes=3)
    with pytest.raises(ValueError, match="input 8×8 is too small"):
        model(torch.randn(1, 3, 8, 8))


def test_train_img_size_below_minimum(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1, corrupt=False)
    args = ["train", "--data-dir", str(data), *TINY_MODEL_ARGS]
    args[args.index("--img-size") + 1] = "16"
    assert main(args) == 2
    assert "--img-size 16 is below this model's minimum input 32" in one_line(capsys, "train")


def test_eval_img_size_below_minimum(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1, corrupt=False)
    model = timm.create_model("dat_tiny", num_classes=3, **TINY_MODEL_KWARGS)
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"model": model.state_dict(), "arch": {"name": "dat_tiny", "kwargs": dict(TINY_MODEL_KWARGS, num_classes=3)}},
        path,
    )
    assert main(["eval", "--checkpoint", str(path), "--data-dir", str(data), "--img-size", "8"]) == 2
    assert "img_size 8 is too small" in one_line(capsys, "eval")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_data_dir_that_does_not_exist(tmp_path, capsys, command):
    missing = tmp_path / "nowhere"
    extra = ["--checkpoint", str(tmp_path / "x.pth")] if command == "eval" else []
    if command == "eval":  # eval reads the checkpoint first: give it one
        model = timm.create_model("dat_tiny", num_classes=3, **TINY_MODEL_KWARGS)
        torch.save(
            {
                "model": model.state_dict(),
                "arch": {"name": "dat_tiny", "kwargs": dict(TINY_MODEL_KWARGS, num_classes=3)},
            },
            tmp_path / "x.pth",
        )
    assert main([command, "--data-dir", str(missing), *extra]) == 2
    assert one_line(capsys, command).endswith(f"data directory {missing} does not exist")


def test_fashion_mnist_directory_with_a_missing_file_names_it(tmp_path, capsys):
    root = make_fashion_mnist(tmp_path / "fmnist")
    (root / "train-labels-idx1-ubyte.gz").unlink()
    assert main(["train", "--data-dir", str(root)]) == 2
    assert f"Fashion-MNIST in {root} is incomplete: train-labels-idx1-ubyte.gz missing" in one_line(capsys, "train")


def test_model_kwargs_typo_suggests_the_argument(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1, corrupt=False)
    assert main(["train", "--data-dir", str(data), "--model", "dat_tiny", "--model-kwargs", "depth=[1,1,1,1]"]) == 2
    assert one_line(capsys, "train").endswith("unknown model argument 'depth' (did you mean 'depths'?)")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("-b", "0", "argument -b/--batch-size: must be a positive integer, got 0"),
        ("--lr", "-1", "argument --lr: must be a finite number >= 0, got -1"),
        ("--workers", "x", "argument --workers/-j: expected an integer >= 0, got 'x'"),
    ],
)
def test_bad_numbers_are_usage_errors(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag, value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"datvit train: error: {message}"


def test_visualize_missing_and_unreadable_image(tmp_path, capsys):
    model = timm.create_model("dat_tiny", num_classes=3, **TINY_MODEL_KWARGS)
    ckpt = tmp_path / "x.pth"
    torch.save(
        {"model": model.state_dict(), "arch": {"name": "dat_tiny", "kwargs": dict(TINY_MODEL_KWARGS, num_classes=3)}},
        ckpt,
    )
    assert main(["visualize", "--checkpoint", str(ckpt), "--image", str(tmp_path / "no.png")]) == 2
    assert "image file not found" in one_line(capsys, "visualize")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    assert main(["visualize", "--checkpoint", str(ckpt), "--image", str(text)]) == 2
    assert f"cannot read image {text}" in one_line(capsys, "visualize")


def test_exit_statuses_of_runtime_failures_and_signals(capsys):
    def disk_full():
        raise FileWriteError(errno.ENOSPC, "cannot write out/last.pth: no space left on the device")

    assert run_with_user_errors("train", disk_full) == 1
    assert one_line(capsys, "train") == "datvit train: error: cannot write out/last.pth: no space left on the device"

    def bug():
        raise KeyError("oops")

    assert run_with_user_errors("eval", bug) == 1
    assert "KeyError: 'oops' (run `datvit --debug eval ...` for the traceback)" in one_line(capsys, "eval")

    def preempted():
        raise RunInterrupted("stopped on SIGTERM after step 3", 15)

    assert run_with_user_errors("train", preempted) == 143
    assert capsys.readouterr().err.strip() == "datvit train: stopped on SIGTERM after step 3"


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "train", "--data-dir", str(tmp_path / "nowhere")])
    assert "DATVIT_DEBUG" not in os.environ  # --debug lasts for its command only (main() also runs in-process)
    monkeypatch.setenv("DATVIT_DEBUG", "1")
    with pytest.raises(KeyError):
        run_with_user_errors("eval", lambda: {}["missing"])
