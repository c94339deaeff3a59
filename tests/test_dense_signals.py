"""SIGTERM and SIGINT sent to the whole process group of ``datvit det train`` / ``datvit seg train`` running with
DataLoader workers — what SLURM's scancel, Kubernetes and a terminal's Ctrl-C do: the run finishes its step, writes
``last.pth`` and exits with 128 + the signal number, and ``--resume auto`` ends with the weights and metrics of an
uninterrupted run.

The signal is sent when the training loop asks the loader for its next batch, the moment a worker killed by the
signal would fail the run. The interrupted run is a fresh interpreter in its own session (as a job step is); the
reference and the resumed runs are in this process, without workers (augmentation is seeded per sample).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import datvit.train.engine as engine
from datvit.cli.main import main
from dense_train_helpers import TINY_DETECTOR, TINY_SEGMENTER, make_scenes
from train_helpers import checkpoint_position, max_abs_diff, subprocess_env

# 4 training scenes in batches of 2 for 2 epochs: the signal comes at the third batch (the first of epoch 2).
AT_FETCH = 3
COMMANDS = {"det": TINY_DETECTOR, "seg": TINY_SEGMENTER}
EVAL_METRICS = {"det": ("eval_bbox_mAP", "eval_segm_mAP"), "seg": ("eval_loss", "eval_mIoU", "eval_aAcc")}

# Sends FAULT_SIGNAL to the process group when the training loader is asked for batch FAULT_FETCH.
DRIVER = """
import os, signal, sys
from torch.utils.data import dataloader
import datvit.train.engine as engine
from datvit.data.loader import SeededDataset
engine.plot_curves = lambda *args, **kwargs: []
at, sig = int(os.environ["FAULT_FETCH"]), getattr(signal, os.environ["FAULT_SIGNAL"])
fetches = 0
next_data = dataloader._MultiProcessingDataLoaderIter._next_data
def next_data_then_signal(self):
    global fetches
    if isinstance(self._dataset, SeededDataset):   # the training loader
        fetches += 1
        if fetches == at:
            os.killpg(os.getpgid(0), sig)
    return next_data(self)
dataloader._MultiProcessingDataLoaderIter._next_data = next_data_then_signal
from datvit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread_no_plots():
    """One thread, as the subprocess (a bit-exact comparison needs the same reduction order), and no plots."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "plot_curves", lambda *args, **kwargs: [])
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("dense_signals"), n_train=4, n_val=1)


def _argv(command: str, data, out) -> list[str]:
    return [
        command,
        "train",
        "--data-dir",
        str(data),
        *COMMANDS[command],
        "-b",
        "2",
        "--epochs",
        "2",
        "--warmup-iters",
        "1",
        "--drop-path",
        "0.1",
        "--no-progress",
        "--seed",
        "3",
        "--output",
        str(out),
    ]


@pytest.fixture(scope="module")
def references(data):
    """The uninterrupted runs' last.pth per command, made on first use."""
    made: dict[str, object] = {}

    def reference(command: str):
        if command not in made:
            out = data.parent / "reference"
            assert main([*_argv(command, data, out), "--workers", "0", "--experiment", command]) == 0
            made[command] = out / command / "last.pth"
        return made[command]

    return reference


def _group_is_gone(pgid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    "command, sig", [("det", signal.SIGTERM), ("seg", signal.SIGINT), ("det", signal.SIGINT), ("seg", signal.SIGTERM)]
)
def test_signal_to_the_process_group_with_workers_stops_cleanly_and_resumes_exactly(
    data, references, tmp_path, command, sig
):
    out = tmp_path / "out"
    argv = [*_argv(command, data, out), "--experiment", "run"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(subprocess_env(), FAULT_FETCH=str(AT_FETCH), FAULT_SIGNAL=sig.name)
    proc = subprocess.Popen(
        [sys.executable, str(driver), *argv, "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert f"stopped on {sig.name} after step {AT_FETCH}" in err and "Traceback" not in err, err
    assert _group_is_gone(proc.pid), "DataLoader workers outlived the run"
    last = out / "run" / "last.pth"
    assert checkpoint_position(last) == (1, 1, AT_FETCH)

    assert main([*argv, "--workers", "0", "--resume", "auto"]) == 0
    reference = torch.load(references(command), map_location="cpu", weights_only=True)
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["step"] == reference["step"] == 4
    assert max_abs_diff(reference["model"], resumed["model"]) == 0
    for ra, rb in zip(reference["history"]["epochs"], resumed["history"]["epochs"], strict=True):
        for key in EVAL_METRICS[command]:
            assert ra[key] == rb[key], key
        # the engine sums step losses in float32 between curve points, and the interruption adds a curve point
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
