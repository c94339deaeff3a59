"""What PyPI gets: an sdist and a wheel that ``twine check`` accepts and that declare version ranges, not pins;
the wheel installed into a fresh virtual environment works from any directory — every command's ``--help``, the
demo config shipped as package data, ``datvit predict`` through the console script — and its inference layer
imports nothing of ``train`` or ``cli``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.inference import build_checkpoint
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_CONSTRAINT")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", DATVIT_CPU_ALLOCATOR="system")
    return env


def _run(cmd, cwd, timeout=240):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist, and the wheel built from it, of a copy of the checkout (nothing lands in the checkout). Without
    build isolation: the build backend is the test environment's setuptools, so no index is needed."""
    root = tmp_path_factory.mktemp("dist")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", source], cwd=root)
    return root / "dist"


def test_sdist_and_wheel_pass_twine_check_and_declare_ranges(dist):
    (sdist,) = dist.glob("datvit-*.tar.gz")
    (wheel,) = dist.glob("datvit-*.whl")
    _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=dist)  # the README renders
    names = zipfile.ZipFile(wheel).namelist()
    assert "datvit/configs/demo_fashion_mnist.yaml" in names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    core = {r.split(">=")[0] for r in requires if "extra ==" not in r}
    assert {"torch", "torchvision", "timm"} <= core, requires
    assert not [r for r in requires if "==" in r.split(";")[0]], f"exact pins replace a user's packages: {requires}"
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "src/datvit/__init__.py", "src/datvit/configs/demo_fashion_mnist.yaml"} <= (
        members
    )


# Run by the fresh environment's Python from a directory without configs/ or src/: the inference layer alone
# first, then every command's --help (walking the parser, subcommands included) in the same process.
_CHECK = """
import contextlib, io, json, sys, sysconfig
import datvit, datvit.inference, datvit.models, datvit.layers, datvit.utils, datvit.tools
assert datvit.__file__.startswith(sysconfig.get_path("purelib")), datvit.__file__
bad = sorted(m for m in sys.modules if m.startswith(("datvit.train", "datvit.cli")))
assert not bad, f"the inference layer imported {bad}"
from datvit.cli.train import train_layers
(where, shipped), _ = train_layers(["-c", "demo_fashion_mnist"])
assert (shipped["model"], shipped["in_chans"], shipped["img_size"]) == ("dat_nano", 1, 32), shipped
import argparse
from datvit.cli.main import build_parser, main

def commands(parser, path=()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))

helps = {}
for path in commands(build_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*path, "--help"])
    helps[" ".join(path)] = out.getvalue()
print(json.dumps(helps))
"""


def test_wheel_in_a_fresh_venv_runs_from_another_directory(dist, tmp_path):
    (wheel,) = dist.glob("datvit-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The wheel goes in with this environment's pip (--python) and --no-deps, before the .pth below exists: pip
    # then sees no other datvit (this environment's editable install) to replace.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=tmp_path)
    # Installing torch and the rest into the fresh environment would download gigabytes; a .pth file lists this
    # environment's site-packages after the fresh one's instead. Python adds the listed directories to sys.path
    # without reading the .pth files inside them, so the editable datvit there stays out and the wheel's is used.
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip()
    )
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (purelib / "_project_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))

    elsewhere = tmp_path / "elsewhere"  # no configs/ or src/ here
    elsewhere.mkdir()
    helps = json.loads(_run([python, "-c", _CHECK], cwd=elsewhere).stdout.strip().splitlines()[-1])
    for command in ("", "predict", "convert", "demo", "export", "det train", "seg predict", "bench profile"):
        assert command in helps, sorted(helps)
    for command, text in helps.items():
        assert text.startswith(f"usage: datvit {command}".rstrip()), (command, text[:200])

    kwargs = resolve_model_kwargs("dat_nano", num_classes=3, in_chans=1)
    torch.save(
        build_checkpoint(
            build_model("dat_nano", kwargs).state_dict(),
            arch=arch_record("dat_nano", kwargs),
            class_names=["a", "b", "c"],
            data_config={
                "input_size": [1, 32, 32],
                "mean": [0.5],
                "std": [0.25],
                "crop_pct": 1.0,
                "interpolation": "bilinear",
            },
        ),
        elsewhere / "m.pth",
    )
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(elsewhere / "x.png")
    out = _run(
        [venv / "bin" / "datvit", "predict", "x.png", "--checkpoint", "m.pth", "--json", "--topk", "2"], elsewhere
    ).stdout
    predictions = json.loads(out)["results"][0]["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"a", "b", "c"}
