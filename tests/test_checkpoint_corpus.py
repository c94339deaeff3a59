"""Malformed checkpoints through every loading route: each file gives one line naming the file and what
is wrong — ``CheckpointError`` from the Python API, ``datvit <cmd>: error: ...`` with exit status 2 and no
traceback from the CLI — and a pickle that would run code never runs it (its marker file stays absent).

The corpus is built here: empty file, a text page saved as .pth (a failed download), random bytes, a truncated
zip, a truncated safetensors file, a bad safetensors header, a pickle of a list, a dict without tensors, another
variant's state_dict, pickles whose reduce calls os.system (zip and legacy formats), a TorchScript archive, a
directory whose config.json is not JSON. Routes: datvit.load_checkpoint, timm's pretrained_cfg_overlay, datvit.inference.load_model,
datvit eval / predict / convert / visualize, datvit train --resume and --initial-checkpoint."""

from __future__ import annotations

import fractions
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import datvit
from datvit.cli.main import main
from datvit.inference import load_model
from datvit.models import DAT, CheckpointError
from datvit.models.factory import PRESETS, resolve_model_kwargs
from train_helpers import make_fashion_mnist

NANO = resolve_model_kwargs("dat_nano", num_classes=10, in_chans=1)  # 2.3M parameters: cheap to build


class RunsCode:
    """Unpickling this calls os.system: a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def build_corpus(root: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name → (path, a phrase the one-line message must contain)."""
    root.mkdir(parents=True, exist_ok=True)
    good = DAT(**NANO).state_dict()
    corpus = {}

    def add(name, filename, phrase, write):
        path = root / filename
        write(path)
        corpus[name] = (path, phrase)

    add("empty", "empty.pth", "empty", lambda p: p.write_bytes(b""))
    add("text", "download.pth", "the download failed", lambda p: p.write_text("the download failed, please retry\n"))
    rng = np.random.default_rng(0)
    noise = bytes([0x13]) + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    add("random", "noise.pth", "not a PyTorch checkpoint", lambda p: p.write_bytes(noise))
    whole = root / "whole.pth"
    torch.save({"model": good}, whole)
    add(
        "truncated zip",
        "truncated.pth",
        "corrupt or truncated",
        lambda p: p.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2]),
    )
    whole_st = root / "whole.safetensors"
    save_file(good, str(whole_st))
    add(
        "truncated safetensors",
        "truncated.safetensors",
        "safetensors",
        lambda p: p.write_bytes(whole_st.read_bytes()[: whole_st.stat().st_size // 2]),
    )
    add(
        "bad safetensors header",
        "header.safetensors",
        "safetensors",
        lambda p: p.write_bytes((40).to_bytes(8, "little") + b"{this is not the json header}" + bytes(64)),
    )
    add("pickle of a list", "list.pth", "no state_dict", lambda p: torch.save([1, 2, 3], p))
    add("dict without tensors", "notes.pth", "no state_dict", lambda p: torch.save({"epoch": 3, "note": "x"}, p))
    other = DAT(
        **resolve_model_kwargs("dat_nano", {"generation": "pp", "use_lpus": [True] * 4}, num_classes=10, in_chans=1)
    ).state_dict()
    add("another variant", "datpp.pth", "does not match the model", lambda p: torch.save(other, p))
    add("runs code (zip)", "evil.pth", "system", lambda p: torch.save({"model": good, "x": RunsCode(marker)}, p))
    add(
        "runs code (legacy pickle)",
        "evil_legacy.pth",
        "system",
        lambda p: torch.save({"model": good, "x": RunsCode(marker)}, p, _use_new_zipfile_serialization=False),
    )

    def scripted(p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still written
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(p))

    add("torchscript", "scripted.pth", "TorchScript", scripted)
    hub = root / "hub"
    hub.mkdir()
    save_file(good, str(hub / "model.safetensors"))
    (hub / "config.json").write_text('{"architecture": "dat_tiny", "model_args": ')
    corpus["bad config.json"] = (hub, "config.json")
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    marker = root / "MARKER_code_ran"
    files = build_corpus(root / "files", marker)
    image = root / "img.png"
    Image.fromarray((np.random.default_rng(1).random((40, 40)) * 255).astype(np.uint8)).save(image)
    data = make_fashion_mnist(root / "fmnist", n_train=16, n_test=8)
    return {"files": files, "marker": marker, "image": image, "data": data, "root": root}


def _one_line(message: str, path: Path, phrase: str) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message or path.name in message, message
    assert phrase.lower() in message.lower(), message


PY_ROUTES = {
    "datvit.load_checkpoint": lambda p: datvit.load_checkpoint(DAT(**NANO), p),
    "timm pretrained_cfg_overlay": lambda p: timm.create_model(
        "dat_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(p)), **NANO
    ),
    "datvit.inference.load_model": lambda p: load_model(p, "dat_nano", in_chans=1),
}


@pytest.mark.parametrize("route", list(PY_ROUTES))
def test_python_routes(corpus, route):
    for name, (path, phrase) in corpus["files"].items():
        if route != "datvit.inference.load_model" and name == "bad config.json":
            path, phrase = path / "config.json", "not a PyTorch checkpoint"  # a JSON file given as weights
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing may warn about loading with weights_only=False
            with pytest.raises(CheckpointError) as e:
                PY_ROUTES[route](path)
        _one_line(str(e.value), path, phrase)
        if name == "random":
            assert "pickles" not in str(e.value)
        if name.startswith("runs code"):
            assert "nothing was executed" in str(e.value) and "trust_checkpoint=True" in str(e.value)
    assert not corpus["marker"].exists(), "a pickled os.system call ran"


def _cli_routes(corpus, path: Path) -> dict[str, list[str]]:
    out, data = corpus["root"] / "out", str(corpus["data"])
    train = [
        "train",
        "--dataset",
        "fashion_mnist",
        "--data-dir",
        data,
        "--model",
        "dat_nano",
        "--img-size",
        "32",
        "--in-chans",
        "1",
        "-b",
        "8",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-progress",
        "--output",
        str(out),
    ]
    return {
        "eval": [
            "eval",
            "--checkpoint",
            str(path),
            "--model",
            "dat_nano",
            "--data-dir",
            data,
            "--no-progress",
            "--workers",
            "0",
        ],
        "predict": ["predict", str(corpus["image"]), "--checkpoint", str(path), "--model", "dat_nano"],
        "convert": ["convert", str(path), str(corpus["root"] / "converted"), "--model", "dat_nano"],
        "visualize": [
            "visualize",
            "--checkpoint",
            str(path),
            "--model",
            "dat_nano",
            "--image",
            str(corpus["image"]),
            "--out",
            str(corpus["root"] / "v.png"),
        ],
        "train --resume": [*train, "--resume", str(path), "--experiment", "r"],
        "train --initial-checkpoint": [*train, "--initial-checkpoint", str(path), "--experiment", "i"],
    }


@pytest.mark.parametrize(
    "route", ["eval", "predict", "convert", "visualize", "train --resume", "train --initial-checkpoint"]
)
def test_cli_routes(corpus, route, capsys):
    command = route.split()[0]
    for name, (path, phrase) in corpus["files"].items():
        if route.startswith("train") and name == "bad config.json":
            path, phrase = path / "config.json", "not a PyTorch checkpoint"
        if route == "train --resume" and name == "another variant":
            phrase = "not a datvit training checkpoint"  # resume needs datvit's training state first
        code = main(_cli_routes(corpus, path)[route])
        _, err = capsys.readouterr()
        assert code == 2, (name, err)
        assert "Traceback" not in err, (name, err)
        errors = [line for line in err.splitlines() if line.startswith(f"datvit {command}: error:")]
        assert len(errors) == 1, (name, err)
        _one_line(errors[0], path, phrase)
        if name == "random":
            assert "pickles" not in err
        if name.startswith("runs code"):
            assert "--trust-checkpoint" in errors[0]
    assert not corpus["marker"].exists(), "a pickled os.system call ran"
    assert not (corpus["root"] / "converted" / "model.safetensors").exists()


def test_trusted_files_load_with_opt_in_only(tmp_path):
    """A harmless non-allowlisted global (fractions.Fraction): refused by default, loaded with trust_checkpoint
    (and a warning that says the file's code runs)."""
    path = tmp_path / "fraction.pth"
    torch.save({"model": DAT(**NANO).state_dict(), "ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="fractions.Fraction.*nothing was executed"):
        datvit.models.read_checkpoint(path)
    with pytest.warns(UserWarning, match="trusted"):
        loaded = datvit.models.read_checkpoint(path, trust_checkpoint=True)
    assert loaded["ratio"] == fractions.Fraction(1, 3)
    with pytest.warns(UserWarning, match="trusted"):
        assert load_model(path, "dat_nano", trust_checkpoint=True).model.num_classes == 10


def test_resume_with_another_model_names_what_differs(corpus, capsys, tmp_path):
    out = tmp_path / "out"
    base = [
        "train",
        "--dataset",
        "fashion_mnist",
        "--data-dir",
        str(corpus["data"]),
        "--model",
        "dat_nano",
        "--img-size",
        "32",
        "--in-chans",
        "1",
        "-b",
        "8",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-progress",
        "--output",
        str(out),
        "--experiment",
        "run",
    ]
    assert main(base) == 0
    capsys.readouterr()
    last = out / "run" / "last.pth"
    code = main([*base, "--resume", str(last), "--model-kwargs", "depths=[1,1,1,1]"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert str(last) in line and "depths [2, 2, 2, 2] vs [1, 1, 1, 1]" in line
    code = main([*base, "--model-kwargs", "depth=[1,1,1,1]"])
    _, err = capsys.readouterr()
    assert code == 2 and "unknown model argument 'depth' (did you mean 'depths'?)" in err
    assert PRESETS["dat_nano"]["depths"] == [2, 2, 2, 2]
