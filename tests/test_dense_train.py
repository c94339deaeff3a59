"""Detection and segmentation through the one training engine: the authors' recipes as configs, their
weight-decay rules, iteration-based schedules, and exact resume of a segmentation run killed with SIGKILL."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from dense_train_helpers import TINY_SEGMENTER, make_scenes
from train_helpers import checkpoint_position, load_weights, max_abs_diff, run_datvit, slow_step_driver, start_driver


def _parse(argv: list[str]):
    """The settings ``datvit det|seg train ...`` resolves before opening the data: defaults < recipe < YAML < flags."""
    import dataclasses
    from types import SimpleNamespace

    from datvit.cli._run_args import settings_layers
    from datvit.cli.main import build_parser
    from datvit.dense.tasks import DetectionTask, SegmentationTask
    from datvit.train.config import merge_settings

    parser = build_parser()
    task = DetectionTask() if argv[0] == "det" else SegmentationTask()
    cls = task.run_config_cls
    given = merge_settings(cls, settings_layers(parser, parser.parse_args(argv), cls))
    defaults = dataclasses.asdict(cls())
    merged = merge_settings(cls, [("defaults", defaults), ("recipe", task.recipe(given)), ("settings", given)])
    return SimpleNamespace(**({k: None for k in defaults} | merged))


def test_shipped_configs_reproduce_the_authors_recipes():
    args = _parse(["det", "train", "-c", "mask_rcnn_datpp_tiny_1x"])
    assert (args.preset, args.opt, args.lr_base, args.lr_base_size, args.weight_decay) == (
        "mask_rcnn_datpp_tiny_1x",
        "adamw",
        4e-4,
        64,
        0.05,
    )
    assert (args.sched, args.decay_milestones, args.decay_rate, args.epochs) == ("multistep", [8, 11], 0.1, 12)
    assert (args.warmup_iters, args.warmup_ratio, args.train_split, args.val_split) == (
        500,
        1e-3,
        "train2017",
        "val2017",
    )
    args = _parse(["seg", "train", "-c", "upernet_datpp_tiny_160k.yaml"])
    assert (args.iters, args.epochs, args.lr_base, args.lr_base_size, args.weight_decay) == (
        160_000,
        None,
        6e-5,
        16,
        0.01,
    )
    assert (args.sched, args.decay_rate, args.warmup_iters, args.crop_size, args.reduce_zero_label) == (
        "poly",
        1.0,
        1500,
        512,
        True,
    )
    args = _parse(["seg", "train", "-c", "upernet_datpp_tiny_160k", "--epochs", "2"])
    assert (args.epochs, args.iters) == (2, None)  # the command line's unit replaces the config's
    args = _parse(["seg", "train", "-c", "fpn_datpp_tiny_80k"])
    assert (args.preset, args.iters, args.batch_size, args.decay_rate, args.amp) == (
        "fpn_datpp_tiny_80k",
        40_000,
        4,
        0.9,
        False,
    )
    args = _parse(["det", "train", "-c", "retinanet_datpp_tiny_1x"])
    assert (args.preset, args.lr_base) == ("retinanet_datpp_tiny_1x", 2e-4)
    # a config in epochs replaces the seg parser's default of 160000 iterations (the demo's config)
    args = _parse(["seg", "train", "-c", "demo_upernet_scenes"])
    assert (args.epochs, args.iters) == (2, None)
    args = _parse(["seg", "train", "-c", "demo_upernet_scenes", "--iters", "50"])
    assert (args.epochs, args.iters) == (None, 50)


def test_dense_config_from_flags_and_the_authors_weight_decay_rule():
    from datvit.dense import DetectorConfig, build_detector
    from datvit.dense.tasks import config_from_dict, config_to_dict, dense_param_groups, resolve_dense_config

    args = _parse(
        [
            "det",
            "train",
            "--preset",
            "retinanet_datpp_tiny_1x",
            "--detector",
            "mask_rcnn",
            "--num-classes",
            "3",
            "--model-kwargs",
            "depths=[1,1,2,1]",
            "dims=[16,32,64,128]",
            "dim_stem=16",
            "heads=[1,2,4,8]",
            "groups=[1,1,2,2]",
            "--drop-path",
            "0.1",
            "--head-kwargs",
            "fpn_channels=32",
        ]
    )
    cfg = resolve_dense_config(args, DetectorConfig, "mask_rcnn")
    assert (cfg.kind, cfg.num_classes, cfg.fpn_channels) == ("mask_rcnn", 3, 32)
    bb = cfg.backbone
    assert (bb.model, bb.drop_path_rate, bb.out_indices, bb.grad_checkpointing) == ("datpp_tiny", 0.1, (1, 2, 3), True)
    # new depths without a stage_spec: DAT++'s N/D pattern is regenerated for them (stage 4 D only)
    assert bb.model_kwargs["stage_spec"] == [["N"], ["N"], ["N", "D"], ["D"]]
    assert config_from_dict(DetectorConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="did you mean 'fpn_channels'"):
        resolve_dense_config(
            _parse(["det", "train", "--num-classes", "3", "--head-kwargs", "fpn_channel=3"]),
            DetectorConfig,
            "mask_rcnn",
        )

    model = build_detector(cfg)
    groups = dense_param_groups(model, 0.05, exempt_norm_layers=True)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert any(n.endswith("rpe_table") for n in no_decay) and any(".norms." in n for n in no_decay)
    assert not any(k in n for n in decay for k in ("norm", "rpe_table", "relative_position_bias_table"))
    assert any(n.endswith(".bias") for n in decay)  # biases decay, as mmcv's default optimizer constructor
    assert len(decay) + len(no_decay) == sum(1 for p in model.parameters() if p.requires_grad)


# Slows every optimizer step so the parent can kill the run between a step checkpoint and the epoch's end.
DRIVER = slow_step_driver(0.3)


def test_segmentation_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """Random crops, flips and photometric distortion, drop path, the poly schedule with warm-up in iterations:
    a run killed mid-epoch and resumed reaches the weights of the uninterrupted one."""
    data = make_scenes(tmp_path, n_train=8, n_val=2)
    out = tmp_path / "out"
    common = [
        "seg",
        "train",
        "--data-dir",
        str(data),
        *TINY_SEGMENTER,
        "--drop-path",
        "0.1",
        "-b",
        "2",
        "--epochs",
        "2",
        "--warmup-iters",
        "2",
        "--workers",
        "0",
        "--checkpoint-interval",
        "2",
        "--output",
        str(out),
        "--no-progress",
        "--seed",
        "5",
        "--aug-kwargs",
        "ratio_range=[0.75,1.5]",
    ]
    full = run_datvit(common + ["--experiment", "full"])
    assert full.returncode == 0, full.stderr

    proc = start_driver(tmp_path, DRIVER, [*common, "--experiment", "killed"])
    last = out / "killed" / "last.pth"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        position = checkpoint_position(last) if last.exists() else None
        if position and position[0] == 1 and position[1] > 0:  # a step checkpoint inside the second epoch
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    epoch, batch, _ = checkpoint_position(last)
    assert epoch == 1 and 0 < batch < 4, (epoch, batch)

    resumed = run_datvit(common + ["--experiment", "killed", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    a, b = out / "full" / "last.pth", out / "killed" / "last.pth"
    assert max_abs_diff(load_weights(a), load_weights(b)) <= 1e-6
    ca = torch.load(a, map_location="cpu", weights_only=True)
    cb = torch.load(b, map_location="cpu", weights_only=True)
    assert ca["step"] == cb["step"] == 8 and cb["task"] == "segmentation"
    for ra, rb in zip(ca["history"]["epochs"], cb["history"]["epochs"]):
        for key in ("train_loss", "eval_loss", "eval_mIoU", "eval_aAcc"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    header = (out / "killed" / "summary.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,eval_loss,eval_mIoU,eval_aAcc,lr,images/s,seconds"
    assert {p.name for p in (out / "killed").glob("*.png")} == {"loss.png", "miou.png", "lr.png"}
