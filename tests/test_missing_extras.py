"""A command that needs an optional dependency which is not installed ends in one line naming the extra that
installs it, ``datvit <command>: error: needs <module>: pip install 'datvit[<extra>]'``, with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.cli._errors import OPTIONAL_MODULES, missing_optional_module, run_with_user_errors
from datvit.inference import build_checkpoint
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs
from dense_train_helpers import TINY_DETECTOR, TINY_SEGMENTER, make_scenes

REPO = Path(__file__).resolve().parents[1]
# import name → distribution name, where they differ beyond - and _
DISTRIBUTIONS = {"material": "mkdocs-material"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_optional_module_names_an_extra_that_installs_it():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in OPTIONAL_MODULES.items():
        if extra not in extras:
            continue  # an extra that pyproject.toml does not declare yet
        names = {_normalized(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in extras[extra]}
        assert _normalized(DISTRIBUTIONS.get(module, module)) in names, (module, extra, extras[extra])
    for extra in ("dense", "export", "int8"):
        assert extra in extras


def test_missing_module_is_found_through_wrapping_errors():
    def missing(name):
        return ModuleNotFoundError(f"No module named '{name}'", name=name)

    assert missing_optional_module(missing("pycocotools")) == "pycocotools"
    assert missing_optional_module(missing("onnxruntime.capi")) == "onnxruntime"
    assert missing_optional_module(missing("not_an_extra")) is None
    assert missing_optional_module(ValueError("x")) is None
    try:  # `raise ... from e`: the cause
        try:
            raise missing("torchao")
        except ImportError as e:
            raise RuntimeError("int8 quantization needs torchao") from e
    except RuntimeError as wrapped:
        assert missing_optional_module(wrapped) == "torchao"
    try:  # `raise ... from None` keeps the context
        try:
            raise missing("onnxscript")
        except ImportError:
            raise ValueError("ONNX export needs onnxscript") from None
    except ValueError as wrapped:
        assert missing_optional_module(wrapped) == "onnxscript"


def test_run_with_user_errors_names_the_extra(capsys, monkeypatch):
    monkeypatch.delenv("DATVIT_DEBUG", raising=False)

    def needs_smp():
        raise ModuleNotFoundError(
            "datvit.dense.Segmenter needs segmentation_models_pytorch: pip install 'datvit[dense]'",
            name="segmentation_models_pytorch",
        )

    assert run_with_user_errors("seg train", needs_smp) == 2
    assert capsys.readouterr().err.strip() == (
        "datvit seg train: error: needs segmentation_models_pytorch: pip install 'datvit[dense]'"
    )

    def needs_something_else():
        raise ModuleNotFoundError("No module named 'not_an_extra'", name="not_an_extra")

    assert run_with_user_errors("eval", needs_something_else) == 1  # not an extra: an unforeseen failure


# Run in a fresh process where every optional module is missing (None in sys.modules makes `import` raise
# ModuleNotFoundError): each command's status follows '@@' on stdout, and '--' ends its output on stderr.
_RUN_WITHOUT_EXTRAS = """
import json, sys
for name in {modules!r}:
    sys.modules[name] = None
from datvit.cli.main import main
for argv in json.loads(sys.argv[1]):
    status = main(argv)
    print("\\n@@", json.dumps(status), flush=True)
    print("--", file=sys.stderr, flush=True)
"""


@pytest.mark.slow
def test_commands_without_their_extra_print_one_line(tmp_path):
    data = make_scenes(tmp_path / "scenes", n_train=2, n_val=1)
    kwargs = resolve_model_kwargs("dat_nano", num_classes=3, in_chans=1)
    torch.save(
        build_checkpoint(
            build_model("dat_nano", kwargs).state_dict(),
            arch=arch_record("dat_nano", kwargs),
            class_names=["a", "b", "c"],
            data_config={"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25], "crop_pct": 1.0},
        ),
        tmp_path / "m.pth",
    )
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    common = ["--data-dir", str(data), "--epochs", "1", "--workers", "0", "--output", str(tmp_path / "out")]
    commands = {
        # command → (argv, the extra its line names)
        "seg train": (["seg", "train", *TINY_SEGMENTER, *common], "dense"),
        "det train": (["det", "train", *TINY_DETECTOR, *common], "dense"),
        "seg eval": (["seg", "eval", "--checkpoint", "m.pth", "--data-dir", str(data)], "dense"),
        "det predict": (["det", "predict", "x.png", "--checkpoint", "m.pth"], "dense"),
        "export": (["export", "--checkpoint", "m.pth", "--format", "onnx", "-o", "m.onnx"], "export"),
        "predict": (["predict", "x.png", "--checkpoint", "m.pth", "--int8"], "int8"),
        "convert": (
            ["convert", "--checkpoint", "m.pth", "--output", "hub", "--push-to-hub", "u/m", "--token", "t"],
            "hf",
        ),
    }
    env = {k: v for k, v in os.environ.items() if k != "DATVIT_DEBUG"}
    env.update(OMP_NUM_THREADS="1", DATVIT_CPU_ALLOCATOR="system", PYTHONPATH=str(REPO / "src"))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_WITHOUT_EXTRAS.format(modules=sorted(OPTIONAL_MODULES)),
            json.dumps([argv for argv, _ in commands.values()]),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    statuses = [json.loads(line[3:]) for line in result.stdout.splitlines() if line.startswith("@@ ")]
    errors = [chunk.strip().splitlines() for chunk in result.stderr.split("--\n")[: len(commands)]]
    assert len(statuses) == len(errors) == len(commands), result.stderr
    for (command, (_, extra)), status, lines in zip(commands.items(), statuses, errors):
        assert lines and "Traceback" not in "\n".join(lines), (command, lines)
        match = re.fullmatch(rf"datvit {command}: error: needs (\w+): pip install 'datvit\[(\w+)\]'", lines[-1])
        assert match and match[2] == extra and OPTIONAL_MODULES[match[1]] == extra, (command, lines)
        assert status == 2, (command, status, lines)
