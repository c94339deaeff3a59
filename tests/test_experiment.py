"""``datvit experiment``: the shipped grids run (--quick) through the engine, finished runs are skipped, a run
stopped mid-way resumes from its last.pth, the report is rebuilt from the runs alone, and bad grids fail with one
line before the first run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from datvit.cli.main import main
from datvit.experiments import load_experiment, mean_interval, shipped_experiments, summarise
from train_helpers import make_fashion_mnist

# every shipped grid on a miniature Fashion-MNIST: one step per run, 16 evaluation images
QUICK = ["--quick", "--set", "train_subset=64", "eval_subset=16", "batch_size=32"]


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=64, n_test=32)


def _run(argv, capsys):
    code = main(["experiment", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_experiments_are_addressable_and_sized():
    assert {"ablation-stages", "backbones", "dense-backbones"} <= set(shipped_experiments())
    for name in shipped_experiments():
        experiment = load_experiment(name)
        assert len(experiment.seeds) >= 3, name
        assert experiment.baseline_configuration() is not None, name
    ablation = load_experiment("ablation-stages")
    assert [v.label for v in ablation.axes["d_stages"]] == ["1-4", "2-4", "3-4", "4", "none"]


def test_backbones_are_matched_within_ten_percent():
    """Parameters and FLOPs of the four backbones (64×64 RGB, 10 classes) within 10% of DAT-nano's."""
    from datvit.models.factory import build_model, count_parameters, resolve_model_kwargs
    from datvit.tools.flops import count_flops

    experiment = load_experiment("backbones")
    sizes = {}
    for value in experiment.axes["backbone"]:
        s = value.settings
        kwargs = resolve_model_kwargs(s["model"], None, s.get("model_kwargs"), num_classes=10, in_chans=3, img_size=64)
        model = build_model(s["model"], kwargs)
        sizes[value.label] = (count_parameters(model), count_flops(model, (3, 64, 64)).macs)
    params0, flops0 = sizes["dat_nano"]
    for label, (params, flops) in sizes.items():
        assert abs(params / params0 - 1) < 0.10, (label, params, params0)
        assert abs(flops / flops0 - 1) < 0.10, (label, flops, flops0)


def test_quick_ablation_runs_every_configuration_then_skips_them(tmp_path, fashion, capsys):
    out_dir = tmp_path / "exp"
    code, out, err = _run(
        ["run", "ablation-stages", "--output", str(out_dir), "--data-dir", str(fashion), *QUICK], capsys
    )
    assert code == 0, err
    exp = out_dir / "ablation-stages-quick"
    results = sorted(exp.glob("runs/*/result.json"))
    assert len(results) == 5
    lines = [line for line in out.splitlines() if line.startswith("[") and "eval_top1" in line]
    assert len(lines) == 5 and lines[0].startswith("[1/5] d_stages=1-4 seed=0: eval_top1 ")
    assert "wall " in lines[0]
    for name in ("report.md", "report.png", "runs.csv", "summary.json"):
        assert (exp / name).is_file(), name
    csv_lines = (exp / "runs.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:4] == ["configuration", "seed", "task", "d_stages"]
    for column in ("eval_top1", "wall_seconds", "images_per_s", "parameters", "gflops"):
        assert column in csv_lines[0]
    assert len(csv_lines) == 6
    result = json.loads(results[0].read_text())
    assert result["parameters"] > 2e6 and result["gflops"] > 0 and result["images_per_s"] > 0
    # TensorBoard events beside each run's summary.csv
    assert list(Path(result["run_dir"]).glob("events.out.tfevents.*"))
    # the same command again: nothing is trained
    code, out, err = _run(
        ["run", "ablation-stages", "--output", str(out_dir), "--data-dir", str(fashion), *QUICK], capsys
    )
    assert code == 0, err
    assert out.count("finished before, skipped") == 5 and "running in" not in out


def test_quick_backbones(tmp_path, fashion, capsys):
    out_dir = tmp_path / "exp"
    code, out, err = _run(["run", "backbones", "--output", str(out_dir), "--data-dir", str(fashion), *QUICK], capsys)
    assert code == 0, err
    summary = summarise(out_dir / "backbones-quick")
    assert list(summary["configurations"]) == [
        "backbone=dat_nano",
        "backbone=swin_nano",
        "backbone=datpp_nano",
        "backbone=convnext_nano",
    ]


def _tiny_grid(path: Path, **extra) -> Path:
    grid = {
        "name": "tiny",
        "task": "train",
        "base": "demo_fashion_mnist",
        "settings": {
            "epochs": 2,
            "train_subset": 32,
            "eval_subset": 16,
            "batch_size": 16,
            "workers": 0,
            "checkpoint_interval": 0,
            "model_kwargs": {"depths": [1, 1, 1, 1]},
        },
        "axes": {"lr": [1.0e-3, 3.0e-3]},
        "seeds": [0, 1],
        "metrics": ["eval_top1", "eval_loss"],
        "baseline": {"lr": 0.001},
    }
    grid.update(extra)
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_run_stopped_mid_way_resumes_finished_runs_are_skipped_and_the_report_rebuilds(tmp_path, fashion, capsys):
    grid = _tiny_grid(tmp_path / "tiny.yaml")
    base = ["run", str(grid), "--output", str(tmp_path / "out"), "--data-dir", str(fashion)]
    # first pass: every run for one epoch only — then one run is made to look killed after its epoch 1 (last.pth,
    # no result.json), as a kill -9 between two epochs leaves it
    code, out, err = _run([*base, "--set", "epochs=1"], capsys)
    assert code == 0, err
    runs = tmp_path / "out" / "tiny" / "runs"
    assert len(list(runs.glob("*/result.json"))) == 4
    for result in runs.glob("*/result.json"):
        if "lr=0.003__seed=1" not in str(result):
            continue
        result.unlink()
    code, out, err = _run(base, capsys)
    assert code == 0, err
    assert out.count("finished before, skipped") == 3
    assert "resumed " in out  # the engine's exact resume from last.pth
    resumed = json.loads((runs / "lr=0.003__seed=1" / "result.json").read_text())
    assert resumed["resumed"] is True and resumed["epochs"] == 2
    assert len(resumed["final_row"]) and resumed["final_row"]["epoch"] == 2

    # the report, rebuilt from the runs alone
    exp = tmp_path / "out" / "tiny"
    first = (exp / "report.md").read_text()
    for name in ("report.md", "report.png", "runs.csv", "summary.json"):
        (exp / name).unlink()
    code, out, err = _run(["report", str(exp)], capsys)
    assert code == 0, err
    assert (exp / "report.md").read_text() == first and (exp / "report.png").is_file()
    assert "| lr=0.001 (baseline) | 2 |" in first
    assert "Differences to the baseline (lr=0.001), paired by seed" in first
    summary = summarise(exp)
    stats = summary["configurations"]["lr=0.003"]["metrics"]["eval_top1"]
    values = [r["metrics"]["eval_top1"] for r in summary["runs"] if r["configuration"]["lr"] == "0.003"]
    assert stats["n"] == 2 and math.isclose(stats["mean"], sum(values) / 2)
    diff = summary["differences"]["lr=0.003"]["metrics"]["eval_top1"]
    assert diff["n"] == 2 and diff["exceeds_seed_spread"] in (True, False)


def test_t_intervals():
    stats = mean_interval([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and math.isclose(stats["std"], 1.0)
    assert math.isclose(stats["half_width"], 4.302653 / math.sqrt(3), rel_tol=1e-4)  # t(0.975, 2)
    assert mean_interval([5.0])["low"] is None


@pytest.mark.parametrize(
    "change,message",
    [
        ({"axes": {"stage_specs": [[["L", "S"]] * 4]}}, "unknown setting stage_specs (did you mean stage_spec?)"),
        ({"axes": {"net": {"a": {"model_kwarg": {"depths": [1, 1, 1, 1]}}}}}, "did you mean model_kwargs?"),
        ({"axes": {"net": {"bad": {"model_kwargs": {"heads": [3, 2, 4, 8]}}}}}, "net=bad: dim 32 is not divisible"),
        ({"axes": {"net": {"bad": {"model_kwargs": {"stage_spec": [["X"]] * 4}}}}}, "unknown block kind 'X'"),
        ({"baseline": {"lr": 0.5}}, "baseline lr=0.5 is not a value of the axis"),
        ({"seedz": [0]}, "unknown key seedz (did you mean seeds?)"),
    ],
)
def test_bad_grids_fail_in_one_line_before_the_first_run(tmp_path, fashion, capsys, change, message):
    grid = _tiny_grid(tmp_path / "bad.yaml")
    data = yaml.safe_load(grid.read_text())
    if "axes" in change:
        data.pop("baseline")
    data.update(change)
    grid.write_text(yaml.safe_dump(data))
    code, out, err = _run(["run", str(grid), "--output", str(tmp_path / "out"), "--data-dir", str(fashion)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("datvit experiment run: error: "), err
    assert message in err, err
    assert not (tmp_path / "out" / "tiny" / "runs").exists()


def test_missing_dataset_fails_before_the_first_run(tmp_path, capsys):
    grid = _tiny_grid(tmp_path / "tiny.yaml")
    code, out, err = _run(
        ["run", str(grid), "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nowhere")], capsys
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "nowhere" in err
    assert not (tmp_path / "out" / "tiny" / "runs").exists()


def test_unknown_experiment_name(capsys):
    code, out, err = _run(["run", "ablation-stage"], capsys)
    assert code == 2 and "did you mean ablation-stages?" in err


def test_quick_dense_backbones_fine_tunes_the_classification_checkpoints(tmp_path, fashion, capsys):
    """Slow (16 dense runs): the pre-train → fine-tune chain of backbones → dense-backbones."""
    out_dir = tmp_path / "exp"
    code, _, err = _run(["run", "backbones", "--output", str(out_dir), "--data-dir", str(fashion), *QUICK], capsys)
    assert code == 0, err
    code, out, err = _run(
        ["run", "dense-backbones", "--output", str(out_dir), "--data-dir", str(fashion), "--quick"], capsys
    )
    assert code == 0, err
    exp = out_dir / "dense-backbones-quick"
    results = [json.loads(p.read_text()) for p in exp.glob("runs/*/result.json")]
    assert len(results) == 16
    finetuned = [r for r in results if r["configuration"]["init"] == "fmnist"]
    assert len(finetuned) == 8
    for r in finetuned:
        args = yaml.safe_load((Path(r["run_dir"]) / "args.yaml").read_text())
        assert args["backbone_weights"].endswith(f"backbone={r['configuration']['backbone']}__seed=0/best.pth")
    assert "loaded backbone weights" in out


def test_parallel_runs_in_worker_processes(tmp_path, fashion, capsys):
    """Slow (worker processes start Python and torch): --parallel 2 runs two at a time, each in its own process."""
    grid = _tiny_grid(tmp_path / "tiny.yaml", seeds=[0])
    code, out, err = _run(
        ["run", str(grid), "--output", str(tmp_path / "out"), "--data-dir", str(fashion), "--parallel", "2"], capsys
    )
    assert code == 0, err
    assert out.count("(process ") == 2 and out.count("eval_top1 ") == 2
    runs = tmp_path / "out" / "tiny" / "runs"
    assert len(list(runs.glob("*/result.json"))) == 2
    assert "epoch 2/2" in (runs / "lr=0.001__seed=0" / "experiment_worker.log").read_text()
