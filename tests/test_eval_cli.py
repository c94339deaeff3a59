"""``datvit eval``: our checkpoints without --model, the authors'-style files with --model, other resolutions."""

from __future__ import annotations

import json

import pytest
import torch

from datvit.cli.main import main
from datvit.models.factory import build_model, resolve_model_kwargs
from train_helpers import TINY_MODEL_ARGS, TINY_MODEL_KWARGS, make_image_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = make_image_folder(root / "data", per_class=6, val_per_class=3)
    assert (
        main(
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
                str(root / "out"),
                "--experiment",
                "e",
                "--no-progress",
                "--lr",
                "3e-3",
            ]
        )
        == 0
    )
    return root / "out" / "e", data


def _eval(capsys, argv):
    code = main(["eval", "--no-progress", "--workers", "0", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_our_checkpoint_matches_training_eval(run, capsys, tmp_path):
    run_dir, _ = run
    results = tmp_path / "r.json"
    code, out, _ = _eval(capsys, ["--checkpoint", str(run_dir / "last.pth"), "--output", str(results)])
    assert code == 0 and "top-1" in out
    r = json.loads(results.read_text())
    row = torch.load(run_dir / "last.pth", weights_only=True)["history"]["epochs"][-1]
    assert r["images"] == 9 and r["model"] == "dat_tiny" and r["split"] == "val"
    assert r["top1"] == pytest.approx(row["eval_top1"]) and r["loss"] == pytest.approx(row["eval_loss"], rel=1e-5)
    assert (r["crop_pct"], r["interpolation"], r["img_size"]) == (0.875, "bicubic", 32)


def test_eval_at_another_resolution_and_crop(run, capsys, tmp_path):
    run_dir, data = run
    results = tmp_path / "r.json"
    code, _, _ = _eval(
        capsys,
        [
            "--checkpoint",
            str(run_dir / "best.pth"),
            "--data-dir",
            str(data / "val"),
            "--img-size",
            "48",
            "--crop-pct",
            "1.0",
            "--interpolation",
            "bilinear",
            "--use-ema",
            "--output",
            str(results),
        ],
    )
    assert code == 0
    r = json.loads(results.read_text())
    assert (r["img_size"], r["crop_pct"], r["interpolation"], r["ema"]) == (48, 1.0, "bilinear", True)
    assert r["images"] == 9 and 0 <= r["top1"] <= 100


def test_eval_authors_style_state_dict_needs_model(run, capsys, tmp_path):
    run_dir, data = run
    # an authors'-style file: {"model": state_dict} with no arch, classifier of 3 classes
    kwargs = resolve_model_kwargs("dat_tiny", None, TINY_MODEL_KWARGS, num_classes=3)
    model = build_model("dat_tiny", kwargs)
    bare = tmp_path / "authors.pth"
    torch.save({"model": model.state_dict()}, bare)
    code, _, err = _eval(capsys, ["--checkpoint", str(bare), "--data-dir", str(data)])
    assert code == 2 and "pass --model" in err
    # a registered variant whose layout differs: a clear mismatch error naming the keys, not a traceback
    code, _, err = _eval(
        capsys, ["--checkpoint", str(bare), "--data-dir", str(data), "--model", "dat_tiny", "--img-size", "32"]
    )
    assert code == 2 and "does not match the model" in err and "Traceback" not in err


def test_eval_rejects_a_dataset_with_more_classes(run, capsys, tmp_path):
    run_dir, _ = run
    data = tmp_path / "more"
    make_image_folder(data, per_class=1, val_per_class=1, corrupt=False)
    (data / "val" / "zebra").mkdir()
    (data / "val" / "zebra" / "a.png").write_bytes((data / "val" / "cat" / "000.png").read_bytes())
    code, _, err = _eval(capsys, ["--checkpoint", str(run_dir / "last.pth"), "--data-dir", str(data)])
    assert code == 2 and "zebra" in err


def test_eval_authors_checkpoint_of_a_registered_variant(run, capsys, tmp_path):
    """The authors' layout ({"model": state_dict} of dat_tiny, 3 classes): --model names the variant, the class
    count comes from the weights, and the position tables built for 224 are resized for 64×64 inputs."""
    import timm

    _, data = run
    torch.manual_seed(0)
    authors = tmp_path / "dat_tiny_3cls.pth"
    torch.save({"model": timm.create_model("dat_tiny", num_classes=3).state_dict()}, authors)
    results = tmp_path / "r.json"
    code, out, err = _eval(
        capsys,
        [
            "--model",
            "dat_tiny",
            "--checkpoint",
            str(authors),
            "--data-dir",
            str(data),
            "--img-size",
            "64",
            "--results-file",
            str(results),
            "-b",
            "16",
        ],
    )
    assert code == 0, err
    r = json.loads(results.read_text())
    assert (r["model"], r["images"], r["img_size"], r["crop_pct"]) == ("dat_tiny", 9, 64, 0.875)
    assert r["param_count"] > 27e6  # dat_tiny with a 3-class head
