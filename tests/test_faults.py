"""Faults during training: signals at a random step (SIGTERM, SIGUSR1, Ctrl-C once and twice, Ctrl-C reaching the
DataLoader workers, a signal during evaluation, one rank of torchrun), a full disk (patched writer and a small
tmpfs), a read-only output, a write killed mid-way, non-finite losses and weights, and fp16 GradScaler overflows.

Each interrupted run is resumed with ``--resume auto`` and must end with exactly (max |Δ| = 0) the weights, EMA and
optimizer state of the uninterrupted run. Runs are in-process where possible (a fresh interpreter costs ~5 s).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import datvit.train.classification as classification
import datvit.train.engine as engine
from datvit.cli.main import build_parser
from datvit.cli.train import train_layers
from train_helpers import TINY_MODEL_ARGS, free_port, make_image_folder, max_abs_diff, subprocess_env

# 13 images (one corrupt) in batches of 4: 3 steps per epoch, 6 in all
COMMON = [
    *TINY_MODEL_ARGS,
    "-b",
    "4",
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--lr",
    "1e-3",
    "--drop-path",
    "0.2",
    "--model-ema",
    "--model-ema-decay",
    "0.9",
    "--workers",
    "0",
    "--no-progress",
    "--seed",
    "7",
]
# DATVIT_FAULT_SEED varies the random steps/points locally; CI uses the fixed default.
RNG = random.Random(int(os.environ.get("DATVIT_FAULT_SEED", "8")))


@pytest.fixture(scope="module", autouse=True)
def quick_and_deterministic():
    """One thread (as the subprocesses: a bit-exact comparison needs the same reduction order) and no plots
    (matplotlib is 80% of a tiny run's time and not what is tested here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "plot_curves", lambda *args, **kwargs: [])
        yield
    torch.set_num_threads(threads)


def train_cli(argv: list[str]) -> int:
    """``datvit train ARGV`` in this process; returns the exit status."""
    args = build_parser().parse_args(["train", *argv])
    return args.func(args)


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def position(path: Path) -> tuple[int, int, int]:
    c = ckpt(path)
    return c["epoch"], c["batch_in_epoch"], c["step"]


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = ckpt(a), ckpt(b)
    assert ca["step"] == cb["step"]
    assert max_abs_diff(ca["model"], cb["model"]) == 0
    assert max_abs_diff(ca["model_ema"], cb["model_ema"]) == 0
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert [r["train_loss"] for r in ca["history"]["epochs"]] == [r["train_loss"] for r in cb["history"]["epochs"]]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "data", per_class=4, val_per_class=2)


@pytest.fixture(scope="module")
def reference(data) -> Path:
    """last.pth of the uninterrupted run."""
    out = data.parent / "out"
    assert train_cli(["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "full"]) == 0
    return out / "full" / "last.pth"


def signal_at(monkeypatch, plan: dict[int, list[int]], before: bool = True) -> None:
    """Send this process the signals ``plan[step]`` during training step ``step`` (1-based), before the step's
    computation or after it."""
    original = engine.Trainer._train_step

    def step(self, *args, **kwargs):
        sigs = plan.get(self.step + 1, [])
        if before:
            for sig in sigs:
                os.kill(os.getpid(), sig)
        out = original(self, *args, **kwargs)
        if not before:
            for sig in sigs:
                os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(engine.Trainer, "_train_step", step)


# -- signals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig, at_step",
    [
        (signal.SIGTERM, RNG.choice([1, 2, 4, 5])),  # mid-epoch
        (signal.SIGUSR1, 3),  # the last batch of epoch 1: the resumed run starts with its eval
    ],
)
def test_signal_writes_checkpoint_and_resume_is_exact(data, reference, tmp_path, monkeypatch, capsys, sig, at_step):
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    signal_at(monkeypatch, {at_step: [sig]}, before=RNG.random() < 0.5)
    assert train_cli(argv) == 128 + sig
    err = capsys.readouterr().err
    assert f"stopped on {signal.Signals(sig).name} after step {at_step}" in err and "--resume auto" in err
    last = out / "run" / "last.pth"
    assert position(last) == ((at_step - 1) // 3, (at_step - 1) % 3 + 1, at_step)
    # the handlers the process had before (SIGINT is SIG_IGN, not Python's default, under nohup or `cmd &`)
    assert {s: signal.getsignal(s) for s in handlers} == handlers

    monkeypatch.undo()
    assert train_cli(argv + ["--resume", "auto"]) == 0
    assert_same_run(reference, last)


def test_signal_during_evaluation_stops_after_the_epoch_checkpoint(data, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"]
    evaluate = classification.evaluate  # what ClassificationTask.evaluate runs

    def evaluate_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(classification, "evaluate", evaluate_then_signal)
    assert train_cli(argv) == 143
    assert position(out / "run" / "last.pth") == (1, 0, 3)
    monkeypatch.undo()
    assert train_cli(argv + ["--resume", "auto"]) == 0
    assert_same_run(reference, out / "run" / "last.pth")


def test_second_ctrl_c_exits_at_once_without_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    signal_at(monkeypatch, {2: [signal.SIGINT, signal.SIGINT]})
    assert train_cli(["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "run" / "last.pth").exists()  # no epoch had ended, and the step was not saved
    assert not list((out / "run").glob(".*.tmp"))


DRIVER = """
import os, signal, sys
import datvit.train.engine as engine
engine.plot_curves = lambda *args, **kwargs: []
at, sig = int(os.environ["FAULT_STEP"]), getattr(signal, os.environ["FAULT_SIGNAL"])
only_rank = os.environ.get("FAULT_RANK")
original = engine.Trainer._train_step
def step(self, *args, **kwargs):
    if self.step + 1 == at and (only_rank is None or os.environ.get("RANK") == only_rank):
        if os.environ.get("FAULT_GROUP"):
            os.killpg(os.getpgid(0), sig)   # as a terminal's Ctrl-C: the DataLoader workers get it too
        else:
            os.kill(os.getpid(), sig)
    return original(self, *args, **kwargs)
engine.Trainer._train_step = step
from datvit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_to_the_process_group_with_dataloader_workers(data, reference, tmp_path):
    """The workers ignore the SIGINT a terminal sends to the whole group, so the step finishes and is saved."""
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    at = RNG.choice([2, 4, 5])
    env = dict(subprocess_env(), FAULT_STEP=str(at), FAULT_SIGNAL="SIGINT", FAULT_GROUP="1")
    proc = subprocess.run(
        [sys.executable, str(driver), "train", *argv, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        start_new_session=True,
    )
    assert proc.returncode == 130, proc.stderr
    assert f"stopped on SIGINT after step {at}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert position(out / "run" / "last.pth")[2] == at
    # resumed with 0 workers: augmentation is seeded per sample, so the result is the same
    assert train_cli(argv + ["--resume", "auto"]) == 0
    assert_same_run(reference, out / "run" / "last.pth")


def test_signal_to_one_torchrun_rank_stops_every_rank_at_the_same_step(data, tmp_path):
    """SIGUSR1 reaches rank 1 only: the per-step all-reduced flag makes rank 0 stop after the same step and write
    the checkpoint. With DATVIT_SLOW_TESTS=1 (two more torchrun launches, ~40 s) the resumed job must also end
    exactly as an uninterrupted one."""
    out = tmp_path / "out"
    argv = ["train", "--data-dir", str(data), *COMMON, "-b", "2", "--output", str(out)]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    def torchrun(extra: list[str], **fault: str) -> subprocess.CompletedProcess:
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
        return subprocess.run(
            [sys.executable, *launcher, str(driver), *argv, *extra],
            capture_output=True,
            text=True,
            timeout=240,
            env={**subprocess_env(), "FAULT_STEP": "0", **fault},
        )

    proc = torchrun(["--experiment", "run"], FAULT_STEP="2", FAULT_SIGNAL="SIGUSR1", FAULT_RANK="1")
    assert proc.returncode != 0
    assert "stopped on SIGUSR1 after step 2" in proc.stderr, proc.stderr
    c = ckpt(out / "run" / "last.pth")
    assert (c["epoch"], c["batch_in_epoch"], c["step"], c["data_state"]["world_size"]) == (0, 2, 2, 2)
    assert len(c["rng_per_rank"]) == 2  # rank 0 gathered both ranks' state at the same step
    if not os.environ.get("DATVIT_SLOW_TESTS"):
        return
    resumed = torchrun(["--experiment", "run", "--resume", "auto"], FAULT_SIGNAL="SIGUSR1")
    assert resumed.returncode == 0, resumed.stderr
    full = torchrun(["--experiment", "full"], FAULT_SIGNAL="SIGUSR1")
    assert full.returncode == 0, full.stderr
    assert_same_run(out / "full" / "last.pth", out / "run" / "last.pth")


# -- files: disk full, read-only output, killed writes ------------------------------------------------------------


def test_disk_full_while_saving_names_the_path_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    code = train_cli(
        ["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run", "--checkpoint-interval", "1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    last = out / "run" / "last.pth"
    assert err[-1] == (
        f"datvit train: error: cannot write {last}: no space left on the device (the previous file there is unchanged)"
    )
    assert position(last) == (0, 1, 1)
    assert not list((out / "run").glob(".*.tmp"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 9 MB tmpfs (room for one 6 MB checkpoint of the tiny model, not for the temp file of a second); skipped
    where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mnt)], capture_output=True).returncode
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_on_a_real_small_filesystem(data, small_tmpfs, capsys):
    code = train_cli(
        [
            "--data-dir",
            str(data),
            *COMMON,
            "--output",
            str(small_tmpfs),
            "--experiment",
            "run",
            "--checkpoint-interval",
            "1",
        ]
    )
    last = small_tmpfs / "run" / "last.pth"
    assert code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"datvit train: error: cannot write {last}: no space left on the device")
    )
    assert position(last) == (0, 1, 1)
    assert not list((small_tmpfs / "run").glob(".*.tmp"))


@pytest.mark.parametrize("how", ["mount", "patched"])
def test_read_only_output_is_one_line(data, tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "ro"
    out.mkdir()
    if how == "mount":  # tests run as root, for whom chmod does not stop writes: a read-only mount does
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here")
    else:

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr("datvit.utils.files.tempfile.mkstemp", read_only)
        monkeypatch.setattr("datvit.utils.files.os.makedirs", read_only)
    try:
        code = train_cli(["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"])
    finally:
        if how == "mount":
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"datvit train: error: cannot write {out / 'run' / 'args.yaml'}: the file system is read-only"
    )


KILLED_WRITER = """
import sys, time
from datvit.utils.files import atomic_save
class Slow:
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))
atomic_save({"model": Slow()}, sys.argv[1])
"""


def test_write_killed_mid_way_keeps_the_old_file_and_the_next_start_removes_the_temp(data, reference, tmp_path, capsys):
    run = tmp_path / "out" / "full"
    shutil.copytree(reference.parent, run)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(run / "last.pth")],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait(timeout=30)
    temps = list(run.glob(".last.pth.*.tmp"))
    assert len(temps) == 1
    assert position(run / "last.pth") == (2, 0, 6)  # the old file is whole
    assert (
        train_cli(
            [
                "--data-dir",
                str(data),
                *COMMON,
                "--output",
                str(tmp_path / "out"),
                "--experiment",
                "full",
                "--resume",
                "auto",
            ]
        )
        == 0
    )
    assert not temps[0].exists()
    assert f"removed {temps[0]}" in capsys.readouterr().err


# -- numerics -----------------------------------------------------------------------------------------------------


def nan_loss_at(monkeypatch, steps: set[int]) -> None:
    """Make the loss NaN at the given (1-based) steps."""
    original = engine.Trainer._train_step

    def step(self, *args, **kwargs):
        task = self.task  # the loss is the training task's (datvit.train.classification.ClassificationTask)
        criterion = task.criterion
        if self.step + 1 in steps:
            task.criterion = lambda logits, targets: criterion(logits, targets) * float("nan")
        try:
            return original(self, *args, **kwargs)
        finally:
            task.criterion = criterion

    monkeypatch.setattr(engine.Trainer, "_train_step", step)


def test_an_isolated_non_finite_loss_is_skipped_and_counted(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    nan_loss_at(monkeypatch, {2})
    assert train_cli(["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run"]) == 0
    c = ckpt(out / "run" / "last.pth")
    assert c["history"]["skipped"] == {"nonfinite_loss": 1, "amp_overflow": 0}
    assert all(torch.isfinite(v).all() for v in c["model"].values() if v.is_floating_point())
    assert all(r["train_loss"] == r["train_loss"] for r in c["history"]["epochs"])  # not NaN
    assert "1 with a non-finite loss" in capsys.readouterr().err


def test_consecutive_non_finite_losses_stop_and_keep_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    nan_loss_at(monkeypatch, {5, 6})
    code = train_cli(
        [
            "--data-dir",
            str(data),
            *COMMON,
            "--output",
            str(out),
            "--experiment",
            "run",
            "--checkpoint-interval",
            "1",
            "--max-bad-steps",
            "2",
        ]
    )
    last = out / "run" / "last.pth"
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not finite for 2 consecutive steps (steps 5–6, epoch 2" in err
    assert f"last good checkpoint is {last} (step 4)" in err
    assert position(last) == (1, 1, 4)


def test_non_finite_weights_are_never_saved(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    original = engine.Trainer._train_step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.step == 2:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(engine.Trainer, "_train_step", step)
    code = train_cli(
        ["--data-dir", str(data), *COMMON, "--output", str(out), "--experiment", "run", "--checkpoint-interval", "1"]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not finite at step 2" in err and "(step 1)" in err
    assert position(out / "run" / "last.pth") == (0, 1, 1)


def test_grad_scaler_skipped_steps_are_counted(data, tmp_path, capsys):
    """GradScaler works on CPU: an inf gradient at step 2 makes it skip that step and halve the scale."""
    trainer = engine.Trainer(
        train_layers(
            ["--data-dir", str(data), *COMMON, "--output", str(tmp_path), "--experiment", "run", "--max-bad-steps", "1"]
        )
    )
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    param = next(trainer.model.parameters())
    param.register_hook(lambda g: g * float("inf") if trainer.step == 1 else g)
    summary = trainer.fit()
    assert summary["skipped_amp_overflow_steps"] == 1 and summary["skipped_nonfinite_steps"] == 0
    assert trainer.scaler.get_scale() == 2.0**7
    assert "1 fp16 overflows (GradScaler)" in capsys.readouterr().err


# -- a long run ---------------------------------------------------------------------------------------------------

MEMORY_DRIVER = """
import os, sys
import datvit.runtime
import datvit.train.engine as engine
engine.plot_curves = lambda *args, **kwargs: []
rss, kept = [], []
save = engine.Trainer.save
def save_and_measure(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if kwargs.get("epoch_end"):
        if os.environ.get("LEAK"):   # the check's own check: keep a copy of the weights every epoch
            kept.append({k: v.clone() for k, v in self.model.state_dict().items()})
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
engine.Trainer.save = save_and_measure
from datvit.cli.main import main
code = main(sys.argv[1:])
print("TUNED", datvit.runtime._tuned)
print("RSS", " ".join(str(r) for r in rss))
sys.exit(code)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
@pytest.mark.parametrize(
    "leak",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                not os.environ.get("DATVIT_SLOW_TESTS"), reason="the check's own check; DATVIT_SLOW_TESTS=1 runs it"
            ),
        ),
    ],
)
def test_memory_stays_flat_over_many_epochs_with_the_tuned_allocator(tmp_path, leak):
    """40 epochs of 3 steps (each with evaluation and an epoch checkpoint): after 5 epochs of warm-up the resident
    set may not grow by more than 16 MB. Measured: +0.2 MB over epochs 5-40 (995 MB resident, mostly torch's
    libraries). The bound sits far below the smallest leak worth catching — a copy of the weights (1.4 MB) kept
    every epoch is +49 MB, a checkpoint's state (6 MB) +210 MB — which the ``leak`` case (DATVIT_SLOW_TESTS=1)
    shows is caught."""
    data = make_image_folder(tmp_path / "data", per_class=3, val_per_class=1, corrupt=False)
    driver = tmp_path / "driver.py"
    driver.write_text(MEMORY_DRIVER)
    env = {**subprocess_env(), **({"LEAK": "1"} if leak else {})}
    env.pop("DATVIT_CPU_ALLOCATOR", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(driver),
            "train",
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "-b",
            "3",
            "--epochs",
            "40",
            "--workers",
            "0",
            "--no-progress",
            "--output",
            str(tmp_path / "out"),
            "--checkpoint-hist",
            "2",
            "--lr",
            "1e-3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("TUNED", "RSS")))
    assert lines["TUNED"] == "True"
    rss = [int(v) for v in lines["RSS"].split()]
    assert len(rss) == 40
    growth = max(rss[5:]) - rss[5]
    if leak:
        assert growth > 16 * 2**20
    else:
        assert growth <= 16 * 2**20, f"resident set grew by {growth / 2**20:.1f} MB after warm-up"


def test_mixup_batch_with_a_single_readable_image_is_a_zero_weight_step(data, tmp_path, capsys):
    """Batches of 2 under Mixup: the one holding the corrupt file keeps a single image, which Mixup cannot pair
    (it used to be trimmed to an empty batch and crash the forward pass)."""
    out = tmp_path / "out"
    assert (
        train_cli(
            ["--data-dir", str(data), *COMMON, "-b", "2", "--epochs", "1", "--output", str(out), "--experiment", "run"]
        )
        == 0
    )
    assert ckpt(out / "run" / "last.pth")["step"] == 6
