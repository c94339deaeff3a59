"""`datvit det|seg train|eval|predict` on a tiny generated scenes dataset: what train leaves behind, what eval
prints (and that it agrees with the run's own evaluation), predictions drawn as PNGs and written as JSON, and
one-line errors for what a user gets wrong."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from datvit.cli.main import main
from dense_train_helpers import TINY_DETECTOR, TINY_SEGMENTER, make_scenes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch (2 steps) of a tiny Mask R-CNN and a tiny UperNet on 4 training scenes, 2 validation scenes."""
    root = tmp_path_factory.mktemp("dense_cli")
    data = make_scenes(root, n_train=4, n_val=2)
    out = root / "out"
    common = [
        "--data-dir",
        str(data),
        "-b",
        "2",
        "--epochs",
        "1",
        "--warmup-iters",
        "1",
        "--workers",
        "0",
        "--output",
        str(out),
        "--log-interval",
        "1",
    ]
    assert main(["det", "train", *TINY_DETECTOR, *common, "--experiment", "det"]) == 0
    assert main(["seg", "train", *TINY_SEGMENTER, *common, "--experiment", "seg"]) == 0
    return data, out / "det", out / "seg"


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"datvit {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_train_leaves_checkpoints_summary_and_curves(runs):
    _, det, seg = runs
    for run, plot, header in (
        (
            det,
            "map.png",
            "epoch,train_loss,eval_bbox_mAP,eval_bbox_mAP50,eval_segm_mAP,eval_segm_mAP50,lr,images/s,seconds",
        ),
        (seg, "miou.png", "epoch,train_loss,eval_loss,eval_mIoU,eval_aAcc,lr,images/s,seconds"),
    ):
        assert {"last.pth", "best.pth", "checkpoint-1.pth", "args.yaml", "summary.csv"} <= {
            p.name for p in run.iterdir()
        }
        assert (run / "summary.csv").read_text().splitlines()[0] == header
        for name in ("loss.png", plot, "lr.png"):
            with Image.open(run / name) as img:
                assert img.format == "PNG"
    ckpt = torch.load(det / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["task"] == "detection" and ckpt["dense_config"]["kind"] == "mask_rcnn"
    assert ckpt["class_names"][0] == "T-shirt/top" and len(ckpt["class_names"]) == 10
    assert ckpt["dense_config"]["backbone"]["weights"] is None and ckpt["arch"] is None
    assert 0.0 <= ckpt["history"]["epochs"][0]["eval_bbox_mAP"] <= 1.0
    assert len(ckpt["history"]["steps"]) == 2 and ckpt["args"]["warmup_iters"] == 1


def test_det_eval_prints_coco_metrics_per_class_and_matches_the_run(runs, tmp_path, capsys):
    data, det, _ = runs
    results = tmp_path / "det.json"
    assert (
        main(
            [
                "det",
                "eval",
                "--checkpoint",
                str(det / "last.pth"),
                "--workers",
                "0",
                "--no-progress",
                "--results-file",
                str(results),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "box  mAP" in out and "mask mAP" in out and "T-shirt/top" in out and "box AP" in out
    record = json.loads(results.read_text())
    ckpt = torch.load(det / "last.pth", map_location="cpu", weights_only=True)
    assert record["bbox_mAP"] == pytest.approx(ckpt["history"]["epochs"][0]["eval_bbox_mAP"], abs=1e-9)
    assert record["images"] == 2 and list(record["per_class"]) == ckpt["class_names"]


def test_seg_eval_prints_miou_per_class_iou_and_pixel_accuracy(runs, capsys):
    _, _, seg = runs
    assert main(["seg", "eval", "--checkpoint", str(seg / "best.pth"), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    trained = torch.load(seg / "best.pth", map_location="cpu", weights_only=True)["history"]["epochs"][0]
    assert f"mIoU {trained['eval_mIoU']:.1f}" in out and f"pixel accuracy {trained['eval_aAcc']:.1f}" in out
    assert "background" in out and "Ankle boot" in out  # class names from classes.txt


def test_predict_draws_pngs_writes_json_and_reports_bad_files(runs, tmp_path, capsys):
    data, det, seg = runs
    images = sorted((data / "val").glob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code = main(
        [
            "det",
            "predict",
            *map(str, images),
            str(broken),
            "--checkpoint",
            str(det / "last.pth"),
            "--output",
            str(tmp_path / "det"),
            "--json",
            str(tmp_path / "det.json"),
            "--score-thresh",
            "0",
            "--no-progress",
        ]
    )
    assert code == 1  # one file failed, the others were predicted
    err = capsys.readouterr().err
    assert "broken.jpg: cannot read the image" in err and "Traceback" not in err
    records = json.loads((tmp_path / "det.json").read_text())
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert all(len(r["boxes"]) == len(r["labels"]) == len(r["scores"]) for r in records)
    for r in records:
        with Image.open(r["output"]) as img:
            assert img.format == "PNG"
    assert (
        main(
            [
                "seg",
                "predict",
                str(data / "val"),
                "--checkpoint",
                str(seg / "last.pth"),
                "--output",
                str(tmp_path / "seg"),
                "--json",
                str(tmp_path / "seg.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    records = json.loads((tmp_path / "seg.json").read_text())
    assert len(records) == 2 and all(sum(r["pixels"].values()) == 64 * 64 for r in records)
    assert {p.name for p in (tmp_path / "seg").iterdir()} == {p.stem + ".png" for p in images}


def test_one_line_errors(runs, tmp_path, capsys):
    data, det, seg = runs
    assert main(["det", "train", "--data-dir", str(tmp_path / "missing"), "--epochs", "1"]) == 2
    assert "instances_train.json" in _one_line_error(capsys.readouterr().err, "det train")
    assert main(["seg", "train", "--data-dir", str(data), "--preset", "upernet_datpp_tinny_160k"]) == 2
    assert "did you mean 'upernet_datpp_tiny_160k'" in _one_line_error(capsys.readouterr().err, "seg train")
    assert main(["seg", "eval", "--checkpoint", str(det / "last.pth")]) == 2
    assert "use datvit det" in _one_line_error(capsys.readouterr().err, "seg eval")
    text = tmp_path / "model.pth"
    text.write_text("the download failed, please retry\n")
    assert main(["det", "eval", "--checkpoint", str(text)]) == 2
    assert str(text) in _one_line_error(capsys.readouterr().err, "det eval")
    assert main(["det", "predict", str(data / "val"), "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "no such file" in _one_line_error(capsys.readouterr().err, "det predict")


def test_labels_the_model_cannot_hold_stop_the_run_before_it_starts(tmp_path, capsys):
    data = make_scenes(tmp_path, n_train=2, n_val=1)  # maps label the background 0 and the garments 1..10
    assert main(["seg", "train", "--data-dir", str(data), "--num-classes", "10", "--epochs", "1"]) == 2
    line = _one_line_error(capsys.readouterr().err, "seg train")
    assert (
        f"{data / 'annotations' / 'train' / '000001.png'}: label 10 is outside the labels 0..9 (255 ignored) "
        "of --num-classes 10"
        in line
        and line.endswith("pass --reduce-zero-label to ignore 0 and count the classes from 1")
    )
    assert main(["det", "train", "--data-dir", str(data), "--num-classes", "5", "--epochs", "1"]) == 2
    line = _one_line_error(capsys.readouterr().err, "det train")
    assert f"{data / 'annotations' / 'instances_train.json'}: 10 categories" in line and "--num-classes 5" in line


def test_demo_dense_starts_from_clean_run_directories(tmp_path, monkeypatch):
    """A second `datvit demo-dense` in the same place reports its own runs: it removes the previous ones first, so
    the engine writes to `runs/<name>` (not `<name>-1`), where the report reads."""
    from datvit.cli import demo_dense

    runs = tmp_path / "runs"
    for name in ("det_dat", "seg_cnn"):
        (runs / name).mkdir(parents=True)
        (runs / name / "last.pth").write_bytes(b"old")
    (runs / "keep").mkdir()
    removed = demo_dense.clear_previous_runs(runs, ["det_dat", "det_cnn", "seg_cnn"])
    assert sorted(p.name for p in removed) == ["det_dat", "seg_cnn"]
    assert sorted(p.name for p in runs.iterdir()) == ["keep"]

    seen = []

    def fake_train(name, args, data, runs_dir):
        seen.append((name, (runs_dir / name).exists()))
        raise SystemExit(0)

    (runs / "det_dat").mkdir()
    monkeypatch.setattr(demo_dense, "_train", fake_train)
    import datvit.dense as dense_pkg

    monkeypatch.setattr(dense_pkg, "make_fashion_scenes", lambda *a, **k: {})
    with pytest.raises(SystemExit):
        main(["demo-dense", "--output", str(tmp_path), "--tasks", "det"])
    assert seen == [("det_dat", False)]
