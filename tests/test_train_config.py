"""Run configuration: the layers (defaults < recipe < YAML < flags), the dataset recipes (the papers' ImageNet
recipe for folders), the frozen resolved config and args.yaml, lr scaling, custom models, weight-decay groups,
resume differences and the CPU mixed-precision policy."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import yaml

from datvit.cli.train import train_layers
from datvit.models.factory import PRESETS, build_model, resolve_model_kwargs
from datvit.train.config import ConfigError, TrainConfig, config_to_dict, merge_settings, recipe_for, scaled_lr
from datvit.train.engine import Trainer, TrainingError
from datvit.train.precision import cpu_flags, cpu_has_native_bf16, resolve_amp
from train_helpers import TINY_MODEL_ARGS, make_image_folder


def parse(argv):
    """The layers of settings ``datvit train ARGV`` gives the engine."""
    return train_layers(argv)


def given(argv):
    """What the command line and its YAML file set (before the recipe and the data fill in the rest)."""
    return merge_settings(TrainConfig, parse(argv))


def with_recipe(argv, kind):
    defaults = dataclasses.asdict(TrainConfig())
    unset = {k: None for k in defaults}
    return unset | merge_settings(
        TrainConfig, [("defaults", defaults), ("recipe", recipe_for(kind)), ("settings", given(argv))]
    )


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"epochs": 7, "batch-size": 32, "lr": 0.01, "model_kwargs": {"dims": [8, 16]}, "model-ema": True}
        )
    )
    args = given(["-c", str(cfg), "--lr", "0.5", "--model-kwargs", "depths=[1,1]", "--no-model-ema"])
    assert args["epochs"] == 7 and args["batch_size"] == 32
    assert args["lr"] == 0.5 and args["model_ema"] is False
    assert args["model_kwargs"] == {"dims": [8, 16], "depths": [1, 1]}  # merged, flags win per key


def test_yaml_with_unknown_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        parse(["-c", str(cfg)])
    assert "unknown option(s) learning_rate" in capsys.readouterr().err


def test_imagenet_recipe_is_the_papers():
    args = SimpleNamespace(**with_recipe([], "folder"))
    assert (args.opt, args.weight_decay, args.sched, args.warmup_epochs, args.clip_grad) == (
        "adamw",
        0.05,
        "cosine",
        20,
        5.0,
    )
    assert (args.smoothing, args.aa, args.reprob, args.mixup, args.cutmix) == (
        0.1,
        "rand-m9-mstd0.5-inc1",
        0.25,
        0.8,
        1.0,
    )
    assert (args.crop_pct, args.interpolation, args.model_ema, args.epochs) == (0.875, "bicubic", True, 300)
    assert args.linear_init == "model" and args.drop_path is None  # the variant's drop path
    assert scaled_lr(args.lr_base, 512, args.lr_base_size) == pytest.approx(5e-4)  # 1e-3 × batch / 1024
    overridden = with_recipe(["--mixup", "0", "--aa", "none", "--smoothing", "0.2"], "folder")
    assert (overridden["mixup"], overridden["aa"], overridden["smoothing"]) == (0, "none", 0.2)


def test_fashion_mnist_recipe_is_single_channel_small():
    args = SimpleNamespace(**with_recipe([], "fashion_mnist"))
    assert (args.in_chans, args.img_size, args.model, args.mixup, args.aa) == (1, 32, "dat_nano", 0.0, None)
    assert (args.drop_path, args.linear_init, args.crop_pct) == (0.0, "torch", 1.0)


def test_custom_model_kwargs_regenerate_the_block_pattern():
    kw = resolve_model_kwargs(
        "dat_tiny",
        {"depths": [2, 2, 4, 2]},
        {"dims": [16, 32, 64, 128]},
        num_classes=5,
        in_chans=1,
        img_size=64,
        drop_path_rate=None,
    )
    assert kw["stage_spec"][2] == ["L", "D", "L", "D"] and kw["num_classes"] == 5 and kw["in_chans"] == 1
    assert kw["drop_path_rate"] == 0.2  # the variant's, since --drop-path was not given
    pp = resolve_model_kwargs("datpp_tiny", None, {"depths": [1, 1, 1, 1]})
    assert pp["stage_spec"] == [["N"], ["N"], ["N"], ["D"]]
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model_kwargs("dat_tinyy")
    model = build_model("dat_nano", resolve_model_kwargs("dat_nano", num_classes=10, in_chans=1))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.28e6, rel=0.01)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert set(PRESETS) == {"dat_nano"}


def test_model_config_file(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "generation": "v1",
                "dims": [16, 32, 64, 128],
                "dim_stem": 16,
                "depths": [1, 1, 1, 1],
                "heads": [1, 2, 4, 8],
                "groups": [-1, -1, 1, 2],
                "window_sizes": [4, 4, 4, 4],
            }
        )
    )
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    args = parse(
        [
            "--data-dir",
            str(data),
            "--model",
            "my_dat",
            "--model-config",
            str(cfg),
            "--img-size",
            "32",
            "--output",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "-b",
            "2",
        ]
    )
    trainer = Trainer(args)
    assert trainer.model.dims == [16, 32, 64, 128] and trainer.model.num_classes == 3
    assert trainer.model_kwargs["stage_spec"] == [["L"], ["L"], ["L"], ["L"]]


def test_no_weight_decay_on_norms_biases_and_position_tables(tmp_path):
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    args = parse(
        [
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "--output",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "-b",
            "2",
            "--grad-checkpointing",
        ]
    )
    trainer = Trainer(args)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert any(n.endswith("rpe_table") for n in no_decay)
    assert all(not n.endswith(("rpe_table", "relative_position_bias_table", ".bias")) for n in decay)
    assert any("layer_norms" in n for n in no_decay) and "cls_head.weight" in decay
    assert trainer.optimizer.param_groups[0]["weight_decay"] in (0.0, 0.05)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.model.grad_checkpointing and all(s.grad_checkpointing for s in trainer.model.stages)


def test_fused_optimizer_by_default_where_torch_has_one(tmp_path):
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    base = ["--data-dir", str(data), *TINY_MODEL_ARGS, "--output", str(tmp_path / "o"), "--workers", "0", "-b", "2"]
    assert Trainer(parse(base)).optimizer.defaults["fused"] is True
    foreach = Trainer(parse([*base, "--no-opt-fused"])).optimizer
    assert not foreach.defaults["fused"]
    sgd = Trainer(parse([*base, "--opt", "sgd", "--lr", "0.1"])).optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["fused"] is True
    lamb = Trainer(parse([*base, "--opt", "lamb", "--lr", "0.1"])).optimizer  # timm's own: no fused step
    assert "fused" not in lamb.defaults or not lamb.defaults["fused"]
    with pytest.raises(TrainingError, match="no fused step for optimizer 'lamb'"):
        Trainer(parse([*base, "--opt", "lamb", "--lr", "0.1", "--opt-fused"]))


def test_fused_and_foreach_adamw_take_the_same_steps():
    """The default (fused) step is the foreach step up to float rounding, decoupled weight decay included."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 4) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [
        torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05, fused=f) for m, f in zip(models, (True, False))
    ]
    for _ in range(5):
        x = torch.randn(16, 8)
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_amp_policy_on_cpu(tmp_path):
    cpu = torch.device("cpu")
    refused = resolve_amp(cpu, True, "bfloat16", native_bf16=False)
    assert not refused.enabled and "no native bf16" in refused.message
    assert resolve_amp(cpu, True, "bfloat16", native_bf16=True).enabled
    fp16 = resolve_amp(cpu, True, "float16", native_bf16=True)
    assert not fp16.enabled and "float16" in fp16.message
    assert not resolve_amp(cpu, False).enabled
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert not cpu_has_native_bf16(str(info)) and "avx2" in cpu_flags(str(info))
    info.write_text("flags\t\t: avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(str(info))
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_amp_refusal_is_reported_by_the_trainer(tmp_path, monkeypatch, capsys):
    import datvit.train.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda path="/proc/cpuinfo": False)
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    args = parse(
        [
            "--data-dir",
            str(data),
            *TINY_MODEL_ARGS,
            "--output",
            str(tmp_path / "o"),
            "--workers",
            "0",
            "-b",
            "2",
            "--amp",
            "--device",
            "cpu",
        ]
    )
    trainer = Trainer(args)
    assert not trainer.amp.enabled and trainer.scaler is None
    assert "--amp refused" in capsys.readouterr().err


def test_linear_init_torch_resets_linear_layers():
    from datvit.train.modeling import reset_linear_layers

    torch.manual_seed(0)
    model = build_model("dat_nano", resolve_model_kwargs("dat_nano", num_classes=10, in_chans=1))
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert max(abs(w.std().item() - 0.02) for w in weights) < 0.005  # the model's truncated normal
    assert reset_linear_layers(model) == len(weights)
    fan_in_32 = [w for w in weights if w.shape[1] == 32]
    assert fan_in_32 and all(abs(w.std().item() - (1 / 32) ** 0.5 / 3**0.5) < 0.02 for w in fan_in_32)


def test_run_config_is_frozen_resolved_once_and_saved(tmp_path):
    """The config a Trainer holds is frozen and complete (no None for what the recipe or the model decide), and
    args.yaml is that config as written."""
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    trainer = Trainer(
        parse(
            [
                "--data-dir",
                str(data),
                "--model",
                "dat_tiny",
                "--model-kwargs",
                "img_size=64",
                "dim_stem=16",
                "dims=[16,32,64,128]",
                "depths=[1,1,2,1]",
                "heads=[1,2,4,8]",
                "groups=[-1,-1,1,2]",
                "window_sizes=[4,4,4,4]",
                "--output",
                str(tmp_path / "o"),
                "--workers",
                "0",
                "-b",
                "2",
                "--experiment",
                "run",
            ]
        )
    )
    config = trainer.config
    assert isinstance(config, TrainConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    # img_size from the model's default, num_classes from the data, lr from the global batch, aa from the recipe
    assert (config.img_size, config.num_classes, config.dataset) == (64, 3, "folder")
    assert config.lr == pytest.approx(scaled_lr(1e-3, 2, 1024))
    assert config.mean == list(config.mean) and len(config.std) == 3
    saved = yaml.safe_load((tmp_path / "o" / "run" / "args.yaml").read_text())
    assert saved == config_to_dict(config) and saved["img_size"] == 64 and saved["experiment"] == "run"


def test_layers_drop_the_other_unit_of_the_run_length(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iters: 500\nwarmup_iters: 10\n")
    assert "epochs" not in merge_settings(TrainConfig, [("recipe", {"epochs": 300}), *parse(["-c", str(cfg)])])
    merged = merge_settings(TrainConfig, [("recipe", {"epochs": 300}), *parse(["-c", str(cfg), "--epochs", "2"])])
    assert merged["epochs"] == 2 and "iters" not in merged
    with pytest.raises(ConfigError, match=r"unknown option\(s\) batchsize \(did you mean batch_size\?\)"):
        merge_settings(TrainConfig, [("x.yaml", {"batchsize": 8})])


def test_resume_names_the_settings_that_differ(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", 2, 1, corrupt=False)
    base = [
        "--data-dir",
        str(data),
        *TINY_MODEL_ARGS,
        "--output",
        str(tmp_path / "o"),
        "--workers",
        "0",
        "-b",
        "2",
        "--experiment",
        "run",
        "--epochs",
        "1",
        "--no-progress",
    ]
    Trainer(parse(base)).fit()
    capsys.readouterr()
    Trainer(parse([*base, "--resume", "auto", "--lr", "0.01", "--epochs", "2"]))
    err = capsys.readouterr().err
    assert "settings that differ from the checkpoint's" in err
    assert "epochs: 1 → 2" in err and "lr: " in err and "→ 0.01" in err
    assert "resume:" not in err  # the flag that asks to resume is not a difference
