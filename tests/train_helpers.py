"""Shared pieces of the training/data/eval tests: tiny synthetic image folders and a tiny DAT configuration."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

# A 4-stage DAT v1 small enough that a training step on 32×32 images takes milliseconds.
TINY_MODEL_ARGS = [
    "--model",
    "dat_tiny",
    "--img-size",
    "32",
    "--model-kwargs",
    "dim_stem=16",
    "dims=[16,32,64,128]",
    "depths=[1,1,2,1]",
    "heads=[1,2,4,8]",
    "groups=[-1,-1,1,2]",
    "window_sizes=[4,4,4,4]",
]
TINY_MODEL_KWARGS = dict(
    img_size=32,
    dim_stem=16,
    dims=[16, 32, 64, 128],
    depths=[1, 1, 2, 1],
    heads=[1, 2, 4, 8],
    groups=[-1, -1, 1, 2],
    window_sizes=[4, 4, 4, 4],
    stage_spec=[["L"], ["L"], ["L", "D"], ["D"]],
)
CLASSES = ("cat", "dog", "fish")


def make_image_folder(
    root: Path, per_class: int = 8, val_per_class: int = 4, corrupt: bool = True, size: tuple[int, int] = (40, 36)
) -> Path:
    """train/<class>/ and val/<class>/ with JPEG and PNG images whose colour depends on the class; with
    ``corrupt``, one broken JPEG in train/cat. Returns ``root``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (rng.random((size[1], size[0], 3)) * 60 + c * 90).astype(np.uint8)
                Image.fromarray(arr).save(d / (f"{i:03d}.jpg" if i % 2 else f"{i:03d}.png"))
    if corrupt:
        (root / "train" / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped when the name ends in .gz) as the Fashion-MNIST files are."""
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def make_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """A miniature Fashion-MNIST (28×28 uint8, labels 0–9) in the official file names."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 50 + labels[:, None, None] * 20).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def run_datvit(
    args: Sequence[str], timeout: float = 240, env: Optional[dict] = None, launcher: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """``datvit <args>`` in a fresh interpreter (optionally under a launcher such as torch.distributed.run)."""
    cmd = [sys.executable, *launcher, "-m", "datvit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or subprocess_env())


def single_and_ddp_checkpoints(
    common: Sequence[str], out: Path, single_batch: int, ddp_batch: int
) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """Run ``datvit <common>`` once in one process (``-b single_batch``, experiment "single") and once under
    torch.distributed.run with 2 processes (``-b ddp_batch`` each, experiment "ddp"); both must succeed.
    Returns their last.pth checkpoints and the DDP run."""
    single = run_datvit([*common, "-b", str(single_batch), "--experiment", "single"])
    assert single.returncode == 0, single.stderr
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    ddp = run_datvit([*common, "-b", str(ddp_batch), "--experiment", "ddp"], launcher=launcher)
    assert ddp.returncode == 0, ddp.stderr
    single_ckpt, ddp_ckpt = (
        torch.load(out / name / "last.pth", map_location="cpu", weights_only=True) for name in ("single", "ddp")
    )
    return single_ckpt, ddp_ckpt, ddp


def start_driver(tmp_path: Path, source: str, args: Sequence[str]) -> subprocess.Popen:
    """Write the driver script ``source`` (e.g. :func:`slow_step_driver`) and start it with ``args`` in the
    background (stdout discarded, stderr piped), one thread."""
    driver = tmp_path / "driver.py"
    driver.write_text(source)
    return subprocess.Popen(
        [sys.executable, str(driver), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env()
    )


def load_weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def slow_step_driver(seconds: float) -> str:
    """A script that runs ``datvit`` with every optimizer step slowed by ``seconds``, so a test can kill the run
    between a step checkpoint and the epoch's end (classification and dense resume tests)."""
    return f"""
import sys, time
import datvit.train.engine as engine
_step = engine.Trainer._train_step
def slow_step(self, *args, **kwargs):
    time.sleep({seconds})
    return _step(self, *args, **kwargs)
engine.Trainer._train_step = slow_step
from datvit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def checkpoint_position(path):
    """(epoch, batch_in_epoch, step) of a training checkpoint, or None while it cannot be read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
