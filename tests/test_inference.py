"""The inference layer: load_model from every kind of file (datvit's, older datvit files, the authors', a
convert directory), the checkpoint format, datvit predict and datvit convert (logits identical through timm and
through datvit), and the layering (inference never imports train)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from datvit.cli.main import main
from datvit.inference import FORMAT_VERSION, build_checkpoint, eval_transform, load_model, read_datvit_checkpoint
from datvit.layers.ops import cpu_native_bf16
from datvit.models import CheckpointError
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs
from train_helpers import TINY_MODEL_KWARGS

CLASSES = ["cat", "dog", "fish"]
DATA_CONFIG = {
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.4, 0.3],
    "std": [0.25, 0.2, 0.3],
    "crop_pct": 0.9,
    "interpolation": "bilinear",
}


def tiny(num_classes=3, seed=0, **overrides):
    kwargs = resolve_model_kwargs("dat_tiny", None, {**TINY_MODEL_KWARGS, **overrides}, num_classes=num_classes)
    torch.manual_seed(seed)
    return build_model("dat_tiny", kwargs).eval(), kwargs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    model, kwargs = tiny()
    ours = root / "ours.pth"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(
        build_checkpoint(
            model.state_dict(),
            arch=arch_record("dat_tiny", kwargs),
            data_config=DATA_CONFIG,
            class_names=CLASSES,
            model_ema=ema,
            training={"epoch": 3, "step": 30},
        ),
        ours,
    )
    authors = root / "authors.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 299}, authors)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 36), (64, 64), (33, 50)]):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    return {"root": root, "model": model, "kwargs": kwargs, "ours": ours, "authors": authors, "images": images}


def logits(model, x):
    with torch.no_grad():
        return model(x)


def test_load_model_from_a_datvit_checkpoint_needs_no_model_name(files):
    loaded = load_model(files["ours"])
    x = torch.randn(2, 3, 32, 32)
    assert not loaded.model.training and loaded.class_names == CLASSES and loaded.arch["name"] == "dat_tiny"
    assert loaded.data_config["input_size"] == (3, 32, 32) and loaded.data_config["crop_pct"] == 0.9
    assert loaded.data_config["interpolation"] == "bilinear" and loaded.checkpoint.training["step"] == 30
    assert loaded.checkpoint.format_version == FORMAT_VERSION
    torch.testing.assert_close(logits(loaded.model, x), logits(files["model"], x), rtol=0, atol=0)
    ema = load_model(files["ours"], use_ema=True).model
    assert torch.equal(ema.state_dict()["cls_head.bias"], files["model"].state_dict()["cls_head.bias"] + 1)
    bigger = load_model(files["ours"], img_size=48)  # position tables resized, preprocessing follows
    assert bigger.data_config["input_size"] == (3, 48, 48) and logits(
        bigger.model, torch.randn(1, 3, 48, 48)
    ).shape == (1, 3)


def test_files_written_before_format_version_still_read(files, tmp_path):
    old = torch.load(files["ours"], weights_only=True)
    del old["format_version"]
    path = tmp_path / "old.pth"
    torch.save(old, path)
    contents = read_datvit_checkpoint(path)
    assert contents.is_datvit and contents.format_version == 0 and contents.training["epoch"] == 3
    assert load_model(path).class_names == CLASSES
    newer = dict(old, format_version=FORMAT_VERSION + 1)
    torch.save(newer, path)
    with pytest.raises(CheckpointError, match="newer than this datvit"):
        load_model(path)
    with pytest.raises(ValueError, match="own keys: model"):
        build_checkpoint({}, arch=None, training={"model": 1})


def test_authors_file_needs_the_variant_and_reads_classes_from_the_weights(files):
    with pytest.raises(CheckpointError, match="does not record its architecture.*--model"):
        load_model(files["authors"])
    loaded = load_model(files["authors"], "dat_tiny", model_kwargs=TINY_MODEL_KWARGS)
    assert loaded.model.num_classes == 3 and loaded.class_names is None
    # the variant's pretrained config: ImageNet mean/std, bicubic, crop 0.875
    assert loaded.data_config["interpolation"] == "bicubic" and loaded.data_config["crop_pct"] == 0.875
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(logits(loaded.model, x), logits(files["model"], x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model(files["authors"], "dat_tiny")  # the full dat_tiny is another architecture


def test_unknown_model_argument_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown model argument 'depth' \(did you mean 'depths'\?\)"):
        resolve_model_kwargs("dat_tiny", None, {"depth": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match=r"unknown model 'dat_tine' \(did you mean 'dat_tiny'\?\)"):
        resolve_model_kwargs("dat_tine")


def test_eval_transform_is_timms(files):
    loaded = load_model(files["ours"])
    image = Image.open(files["images"] / "1.png")
    x = eval_transform(loaded.data_config)(image)
    ref = timm.data.create_transform(
        32, interpolation="bilinear", mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), crop_pct=0.9
    )(image)
    assert x.shape == (3, 32, 32) and torch.equal(x, ref)


def test_predict_prints_topk_and_keeps_going_past_bad_files(files, capsys, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_file = tmp_path / "p.json"
    code = main(
        [
            "predict",
            str(files["images"]),
            str(bad),
            str(tmp_path / "missing.png"),
            "--checkpoint",
            str(files["ours"]),
            "--topk",
            "2",
            "-b",
            "2",
            "--json",
            "--output",
            str(out_file),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in err and "missing.png" in err and "Traceback" not in err
    result = json.loads(out_file.read_text())
    assert [r["file"] for r in result["results"]] == [str(files["images"] / f"{i}.png") for i in range(3)]
    assert {e["file"] for e in result["errors"]} == {str(bad), str(tmp_path / "missing.png")}
    # batched predictions equal a single-image forward through the same preprocessing
    loaded = load_model(files["ours"])
    x = eval_transform(loaded.data_config)(Image.open(files["images"] / "2.png").convert("RGB"))
    probs = logits(loaded.model, x[None]).softmax(-1)[0]
    top = result["results"][2]["predictions"]
    assert len(top) == 2 and top[0]["label"] == CLASSES[int(probs.argmax())]
    assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    code = main(["predict", str(files["images"] / "*.png"), "--checkpoint", str(files["ours"]), "--topk", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and len(out.strip().splitlines()) == 3 and "%" in out


def test_predict_compile_flag_runs_through_optimize_for_inference(files, capsys, monkeypatch):
    """--compile hands the model to datvit.optimize_for_inference (tests/test_deploy.py checks its outputs)."""
    import datvit.cli._deploy_args
    from datvit.deploy import InferenceOptimization

    seen = []

    def fake_optimize(model, optimization):
        seen.append(optimization)
        return model

    monkeypatch.setattr(datvit.cli._deploy_args, "optimize_for_inference", fake_optimize)
    code = main(
        [
            "predict",
            str(files["images"] / "0.png"),
            "--checkpoint",
            str(files["ours"]),
            "--compile",
            "--compile-mode",
            "max-autotune",
        ]
    )
    capsys.readouterr()
    assert code == 0 and seen == [InferenceOptimization(compile=True, freezing=True, mode="max-autotune")]


def _predicted_probabilities_close(files, capsys, flag: str) -> None:
    """``datvit predict`` with and without ``flag`` on four images: every class probability within 0.05, and not
    identical (the flag did something)."""
    images = sorted(str(p) for p in files["images"].glob("*.png"))[:4]
    k = files["model"].num_classes
    probs = []
    for extra in ([], [flag]):
        assert main(["predict", *images, "--checkpoint", str(files["ours"]), "--topk", str(k), "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)["results"]
        probs.append(
            torch.tensor([[{p["index"]: p["probability"] for p in r["predictions"]}[i] for i in range(k)] for r in out])
        )
    assert probs[0].shape == (len(images), k)
    assert (probs[0] - probs[1]).abs().max() < 0.05 and not torch.equal(probs[0], probs[1])


def test_predict_int8_stays_close_to_float(files, capsys):
    """--int8 (torchao, eager here): the class probabilities move little (the fixture's weights are random, so
    near-ties may swap; the demo's trained model keeps its accuracy: docs/benchmarks.md "Deployment")."""
    pytest.importorskip("torchao")
    _predicted_probabilities_close(files, capsys, "--int8")


@pytest.mark.skipif(not cpu_native_bf16(), reason="this CPU has no native bf16")
def test_predict_amp_runs_in_bf16_and_stays_close_to_float(files, capsys):
    """--amp: bf16 autocast through optimize_for_inference; the class probabilities move little."""
    _predicted_probabilities_close(files, capsys, "--amp")


def test_predict_names_imagenet_classes_for_a_1000_class_head(tmp_path, files, capsys):
    model, _ = tiny(num_classes=1000)
    path = tmp_path / "in1k.pth"
    kwargs = resolve_model_kwargs("dat_tiny", None, TINY_MODEL_KWARGS, num_classes=1000)
    torch.save(
        build_checkpoint(model.state_dict(), arch=arch_record("dat_tiny", kwargs), data_config=DATA_CONFIG), path
    )
    code = main(["predict", str(files["images"] / "0.png"), "--checkpoint", str(path), "--json", "--topk", "3"])
    out, _ = capsys.readouterr()
    labels = [p["label"] for p in json.loads(out)["results"][0]["predictions"]]
    info = timm.data.ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    assert code == 0 and len(labels) == 3 and all(label in names for label in labels)


@pytest.mark.parametrize("name", ["dat_tiny", "dat_nano"])
def test_convert_round_trip_through_timm_and_datvit(tmp_path, files, name, capsys):
    if name == "dat_tiny":
        model, kwargs, src = files["model"], files["kwargs"], files["ours"]
    else:  # a preset (not a timm name): config.json names dat_tiny, model_args rebuild the same network
        kwargs = resolve_model_kwargs("dat_nano", num_classes=5, in_chans=1)
        torch.manual_seed(1)
        model = build_model("dat_nano", kwargs).eval()
        src = tmp_path / "nano.pth"
        torch.save(
            build_checkpoint(
                model.state_dict(),
                arch=arch_record("dat_nano", kwargs),
                data_config={**DATA_CONFIG, "input_size": [1, 32, 32], "mean": [0.3], "std": [0.3]},
                class_names=list("abcde"),
            ),
            src,
        )
    dst = tmp_path / "hub"
    assert main(["convert", str(src), str(dst)]) == 0
    assert main(["convert", str(src), str(dst)]) == 2  # nothing is overwritten without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    config = json.loads((dst / "config.json").read_text())
    assert config["architecture"] == "dat_tiny" and config["num_classes"] == model.num_classes
    assert config["num_features"] == model.num_features and config["model_args"]["dims"] == list(kwargs["dims"])
    cfg = config["pretrained_cfg"]
    assert cfg["first_conv"] == "patch_proj.0" and cfg["classifier"] == "cls_head"
    assert cfg["input_size"][1:] == [32, 32] and cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bilinear"
    assert config["label_names"] == (CLASSES if name == "dat_tiny" else list("abcde"))
    x = torch.randn(2, model.in_chans, 32, 32)
    assert "num_classes" not in config["model_args"]  # timm's layout: the head size is the top-level key
    through_timm = timm.create_model(f"local-dir:{dst}", pretrained=True).eval()
    through_file = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(dst / "model.safetensors")),
        num_classes=config["num_classes"],
        **config["model_args"],
    ).eval()
    through_datvit = load_model(dst)
    assert through_datvit.arch["name"] == name and through_datvit.class_names == config["label_names"]
    assert through_datvit.data_config["input_size"][0] == model.in_chans
    expected = logits(model, x)
    assert torch.equal(logits(through_timm, x), expected) and torch.equal(logits(through_file, x), expected)
    assert torch.equal(logits(through_datvit.model, x), expected)
    assert torch.equal(logits(load_model(dst / "model.safetensors").model, x), expected)


def test_convert_an_authors_file_with_the_variant(tmp_path):
    """A file without an architecture record (the authors' layout: {"model": state_dict}) converts with --model;
    the preprocessing is then the model's pretrained config. (dat_nano keeps it fast; dat_tiny goes the same way.)"""
    dst, src = tmp_path / "authors_hub", tmp_path / "a.pth"
    model = build_model("dat_nano", resolve_model_kwargs("dat_nano", num_classes=4)).eval()
    torch.save({"model": model.state_dict()}, src)
    assert main(["convert", str(src), str(dst)]) == 2  # the authors' files do not say which variant
    assert main(["convert", str(src), str(dst), "--model", "dat_nano"]) == 0
    config = json.loads((dst / "config.json").read_text())
    assert config["architecture"] == "dat_tiny" and config["num_classes"] == 4 and "label_names" not in config
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 0.875
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(logits(load_model(dst).model, x), logits(model, x), rtol=0, atol=0)


def test_predict_amp_on_a_cpu_without_native_bf16_is_one_line(files, capsys, monkeypatch):
    """--amp where bf16 would be emulated: refused in one line (a usage error), no traceback."""
    import datvit.deploy

    monkeypatch.setattr(datvit.deploy, "cpu_native_bf16", lambda: False)
    code = main(
        ["predict", str(files["images"] / "0.png"), "--checkpoint", str(files["ours"]), "--amp", "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "native bf16" in err[0] and "Traceback" not in err[0], err
