"""A wheel built from the repository works from any directory: ``datvit --help``, the demo config shipped as
package data (read by name, not relative to the working directory), ``datvit predict`` — and the installed
inference layer imports nothing of ``train`` or ``cli``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datvit.inference import build_checkpoint
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=240):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"  # build from a copy: nothing (build/, egg-info) lands in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
            "-w",
            str(wheels),
        ],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = wheels.glob("datvit-*.whl")
    assert "datvit/configs/demo_fashion_mnist.yaml" in zipfile.ZipFile(wheel).namelist()
    target = tmp_path / "site"
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        cwd=tmp_path,
        env=env,
    )

    elsewhere = tmp_path / "elsewhere"  # no configs/ or src/ here
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(target)
    out = _run([sys.executable, "-m", "datvit", "--help"], cwd=elsewhere, env=env).stdout
    assert "predict" in out and "convert" in out and "demo" in out
    check = (
        "import sys, datvit, datvit.inference, datvit.models, datvit.layers, datvit.utils, datvit.tools\n"
        f"assert datvit.__file__.startswith({str(target)!r}), datvit.__file__\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('datvit.train', 'datvit.cli')))\n"
        "assert not bad, f'the inference layer imported {bad}'\n"
        "from datvit.cli.train import train_layers\n"
        "(where, shipped), _ = train_layers(['-c', 'demo_fashion_mnist'])\n"
        "assert (shipped['model'], shipped['in_chans'], shipped['img_size']) == ('dat_nano', 1, 32), shipped\n"
        "print('ok')\n"
    )
    assert _run([sys.executable, "-c", check], cwd=elsewhere, env=env).stdout.strip() == "ok"

    kwargs = resolve_model_kwargs("dat_nano", num_classes=3, in_chans=1)
    model = build_model("dat_nano", kwargs)
    torch.save(
        build_checkpoint(
            model.state_dict(),
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
        [sys.executable, "-m", "datvit", "predict", "x.png", "--checkpoint", "m.pth", "--json", "--topk", "2"],
        cwd=elsewhere,
        env=env,
    ).stdout
    predictions = json.loads(out)["results"][0]["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"a", "b", "c"}
