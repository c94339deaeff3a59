"""``datvit det|seg export`` and ``datvit.dense.export``: detectors to TorchScript and ONNX, segmenters to ONNX, each
checked against eager on images of two sizes, and the exported files run by ``datvit det|seg predict --runtime``
through the same pipeline as a checkpoint; formats the exporters cannot handle end in one line naming the reason."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.cli.main import main
from datvit.dense import (
    build_detector,
    build_segmenter,
    check_detector_export,
    export_detector,
    load_exported_detector,
    segment,
)
from datvit.dense import export as dx
from datvit.dense.tasks import config_to_dict
from dense_helpers import tiny_detector, tiny_segmenter

CLASSES = ["shirt", "shoe", "bag"]


def _save_checkpoint(path, task, cfg, model, data_config):
    torch.save(
        {
            "task": task,
            "dense_config": config_to_dict(cfg),
            "model": model.state_dict(),
            "class_names": CLASSES if task == "detection" else CLASSES + ["background"],
            "data_config": data_config,
        },
        path,
    )
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of a tiny Mask R-CNN (DAT v1), a tiny Faster R-CNN (DAT++) and a tiny UperNet (DAT v1); images
    for the detectors, 60×80 and 45×77 (non-square, not a multiple of 32), and for the segmenter, 70×100 and 35×50
    (both rescaled to 70×100 by its data config)."""
    root = tmp_path_factory.mktemp("dense_export")
    torch.manual_seed(0)
    out = {"root": root}
    for name, kind, backbone in (("mask", "mask_rcnn", "dat_tiny"), ("faster_pp", "faster_rcnn", "datpp_tiny")):
        cfg = tiny_detector(kind, backbone, box_score_thresh=0.0)
        out[name] = _save_checkpoint(root / f"{name}.pth", "detection", cfg, build_detector(cfg), {"min_size": 64})
    cfg = tiny_segmenter("upernet", "dat_tiny")
    data = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_size": 64, "img_scale": [100, 70]}
    out["seg"] = _save_checkpoint(root / "seg.pth", "segmentation", cfg, build_segmenter(cfg), data)
    rng = np.random.default_rng(0)
    for name, h, w in (("img", 60, 80), ("img", 45, 77), ("seg", 70, 100), ("seg", 35, 50)):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"{name}_{h}x{w}.png")
    return out


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"datvit {command}: error: "), err
    return lines[0]


def _predict_json(files, command, checkpoint, tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    images = str(files["root"] / ("img_*.png" if command == "det" else "seg_*.png"))
    argv = [command, "predict", images, "--checkpoint", checkpoint, "--no-progress"]
    argv += ["--output", str(tmp_path / name), "--json", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_detector_export_check_and_predict(files, tmp_path, capsys, fmt):
    """The whole Mask R-CNN as TorchScript (bit-identical) or ONNX (one image, dynamic H×W): the CLI's check on
    two image sizes passes, and `det predict --runtime` draws and reports what eager predict does."""
    path = str(tmp_path / ("mask.pt" if fmt == "torchscript" else "mask.onnx"))
    argv = ["det", "export", "--checkpoint", files["mask"], "--format", fmt, "--output", path, "--img-size", "60", "80"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.startswith("check: ")]
    assert len(checks) == 2 and "60×80" in checks[0] and "45×" in checks[1], out
    eager = _predict_json(files, "det", files["mask"], tmp_path, "eager", "--score-thresh", "0")
    exported = _predict_json(files, "det", path, tmp_path, "exported", "--runtime", fmt, "--score-thresh", "0")
    assert len(eager) == len(exported) == 2
    for e, x in zip(eager, exported):
        assert e["labels"] == x["labels"] and len(e["boxes"]) == len(x["boxes"]) == 10
        assert np.allclose(e["boxes"], x["boxes"], atol=1e-3) and np.allclose(e["scores"], x["scores"], atol=1e-4)
        if fmt == "torchscript":
            assert e == {**x, "output": e["output"]}  # bit-identical, so the JSON is too
    assert (tmp_path / "exported" / "img_45x77.png").is_file()


@pytest.mark.parametrize("kind", ["faster_rcnn", "retinanet"])
def test_torchscript_detectors_match_eager(tmp_path, kind):
    """torch.jit.script of Faster R-CNN with a DAT++ backbone and RetinaNet: identical detections at two sizes
    (the scripted resize computes its scale as eager does), and the eager model is left as it was."""
    torch.manual_seed(0)
    detector = build_detector(tiny_detector(kind, "datpp_tiny" if kind == "faster_rcnn" else "dat_tiny")).eval()
    if kind == "retinanet":  # distinct scores: a fresh RetinaNet scores every anchor at its prior, 0.01
        torch.nn.init.normal_(detector.head.classification_head.cls_logits.bias, -2.0, 1.0)
    body = type(detector.backbone.body)
    path = export_detector(detector, "torchscript", tmp_path / "d.pt", metadata={"class_names": CLASSES})
    assert type(detector.backbone.body) is body
    checks = check_detector_export(path, detector, [(60, 80), (45, 77)])
    assert all(c.ok and c.eager_detections == 10 for c in checks), checks
    assert all(c.max_box_diff == 0 and c.max_score_diff == 0 for c in checks), checks
    loaded = load_exported_detector(path)
    assert loaded.runtime == "torchscript" and loaded.metadata["class_names"] == CLASSES


def test_segmenter_export_check_and_predict(files, tmp_path, capsys):
    """UperNet to ONNX at a non-square size that is not a multiple of 32 (padded in the graph, cropped back):
    logits within 1e-3 and argmax equal on ≥ 99.9% of pixels; `seg predict --runtime onnx` agrees with eager."""
    path = str(tmp_path / "seg.onnx")
    argv = ["seg", "export", "--checkpoint", files["seg"], "--output", path, "--img-size", "70", "100"]
    assert main([*argv, "--static-size"]) == 0  # the fixed graph here; test_segmenter_dynamic_size has the other
    out = capsys.readouterr().out
    assert "fixed 70×100" in out and "check: onnxruntime vs eager on (2, 3, 70, 100)" in out, out
    seg = dx.load_exported_segmenter(path)
    assert seg.fixed_size == (70, 100) and seg.metadata["class_names"][-1] == "background"
    model = build_segmenter(tiny_segmenter("upernet", "dat_tiny")).eval()
    model.load_state_dict(torch.load(files["seg"], weights_only=True)["model"])
    x = torch.randn(1, 3, 70, 100)
    diff = (seg(x) - segment(model, x)).abs().max().item()
    assert diff < 1e-3
    # predict rescales both images to 70×100, the graph's size: the same padding, the same class map
    eager = _predict_json(files, "seg", files["seg"], tmp_path, "eager")
    exported = _predict_json(files, "seg", path, tmp_path, "exported", "--runtime", "onnx")
    assert len(eager) == len(exported) == 2
    for e, x in zip(eager, exported):
        assert e["pixels"] == x["pixels"], (e, x)
    assert (tmp_path / "exported" / "seg_35x50.png").is_file()


@pytest.mark.skipif(not dx.dynamic_size_supported(), reason="the DAT backbone does not export a symbolic H×W yet")
def test_segmenter_dynamic_size(files, tmp_path, capsys):
    """One ONNX graph for every size: the CLI checks two sizes (one non-square, not a multiple of 32), and the
    file runs a third."""
    path = str(tmp_path / "seg_dynamic.onnx")
    argv = ["seg", "export", "--checkpoint", files["seg"], "--output", path, "--img-size", "64", "96"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("check: onnxruntime") == 2
    model = build_segmenter(tiny_segmenter("upernet", "dat_tiny")).eval()
    model.load_state_dict(torch.load(files["seg"], weights_only=True)["model"])
    checks = dx.check_segmenter_export(path, model, [(45, 77), (100, 70)], batch=1)
    assert all(c.ok for c in checks), checks


def test_datpp_detector_onnx_fails_in_one_line(files, tmp_path, capsys):
    """torch's TorchScript-based ONNX exporter stops at DAT++'s local perception unit: one line with the
    exporter's reason, exit status 1, no file."""
    path = tmp_path / "pp.onnx"
    argv = ["det", "export", "--checkpoint", files["faster_pp"], "--format", "onnx", "--output", str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    line = _one_line_error(err, "det export")
    assert "convolution for kernel of unknown shape" in line, line
    assert not path.exists()


@pytest.mark.parametrize(
    "argv",
    [["--format", "torch-export"], ["--format", "onnx", "--onnx-exporter", "dynamo"]],
    ids=["torch-export", "onnx-dynamo"],
)
def test_unsupported_detector_formats_name_the_reason(files, tmp_path, capsys, argv):
    """torch.export (and the dynamo ONNX exporter, which runs it) cannot trace torchvision's post-processing:
    the line says so and names torch's data-dependent guard."""
    path = tmp_path / "d.out"
    assert main(["det", "export", "--checkpoint", files["mask"], "--output", str(path), *argv]) == 1
    line = _one_line_error(capsys.readouterr().err, "det export")
    assert "data-dependent" in line and "torchvision" in line, line
    assert not path.exists()


def test_usage_errors_and_missing_extras(files, tmp_path, capsys, monkeypatch):
    """A detector checkpoint given to seg export, a torchscript runtime for a segmenter, a missing onnxruntime
    or onnx: one line each, exit status 2."""
    monkeypatch.delenv("DATVIT_DEBUG", raising=False)
    out = tmp_path / "x.onnx"
    out.write_bytes(b"not a graph")
    out = str(out)
    assert main(["seg", "export", "--checkpoint", files["mask"], "--output", out]) == 2
    assert "use datvit det" in _one_line_error(capsys.readouterr().err, "seg export")
    image = str(files["root"] / "img_60x80.png")
    assert main(["det", "predict", image, "--checkpoint", files["mask"], "--runtime", "onnx"]) == 2
    assert "not an ONNX file" in _one_line_error(capsys.readouterr().err, "det predict")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["seg", "predict", image, "--checkpoint", out, "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err, "seg predict").endswith("needs onnxruntime: pip install 'datvit[export]'")
    monkeypatch.setitem(sys.modules, "onnx", None)
    argv = ["det", "export", "--checkpoint", files["mask"], "--format", "onnx", "--output", out]
    assert main(argv) == 2
    assert _one_line_error(capsys.readouterr().err, "det export").endswith("needs onnx: pip install 'datvit[export]'")


def test_parser_formats_match_the_library():
    from datvit.cli import _dense

    assert _dense.DETECTOR_EXPORT_FORMATS == dx.DETECTOR_FORMATS
    assert _dense.SEGMENTER_EXPORT_FORMATS == dx.SEGMENTER_FORMATS
