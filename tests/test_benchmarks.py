"""Smoke tests of the benchmark harness (``datvit.tools.benchmark``): a tiny configuration end to end (JSON, markdown
and PNG written, with the fields the report relies on), through ``python -m benchmarks.run`` in the checkout and
through ``datvit bench`` from another directory with only the package on the path. Timings are not checked."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")


SMOKE_ARGS = ["--img-size", "64", "--batch-sizes", "1", "--train-batch-sizes", "1", "--iters", "1", "--warmup", "0",
              "--modes", "eager", "--no-compile", "--matmul-sizes", "128", "--module-batch", "1", "--train-iters",
              "1", "--threads", "1", "--onnx-models", ""]


@pytest.mark.timeout(400)
def test_benchmark_smoke(tmp_path):
    from benchmarks import run

    out = tmp_path / "bench"
    run.main(["--models", "dat_tiny", "--train-runs", "2", *SMOKE_ARGS, "--out", str(out)])
    report = json.loads((out / "benchmark.json").read_text())
    assert report["command"].startswith("python -m benchmarks.run")
    assert (out / "benchmark.png").stat().st_size > 1000
    assert (out / "benchmark.md").read_text().startswith("# datvit benchmark")

    machine = report["machine"]
    for key in ("cpu", "torch", "device", "torch_threads", "usable_cpus"):
        assert key in machine
    assert report["matmul_peak"]["peak_gflops"] > 0

    labels = {(r["label"], r["kind"], r["batch"]) for r in report["results"]}
    assert labels == {("dat_tiny:fast", "inference", 1), ("dat_tiny:reference", "inference", 1),
                      ("dat_tiny:fast", "train", 1), ("dat_tiny:reference", "train", 1)}
    for r in report["results"]:
        assert r["images_per_s"] > 0 and r["ms_median"] > 0
        assert r["gflops"] > 0 and r["fraction_of_peak"] > 0

    assert report["flops"]["dat_tiny"]["forward_gflop"] > 0
    assert report["flops"]["dat_tiny"]["train_gflop"] > report["flops"]["dat_tiny"]["forward_gflop"]
    assert report["consistency"]["dat_tiny"]["max_abs_logit_diff"] < 1e-3

    ratio = [r for r in report["ratios"] if r["kind"] == "inference"][0]
    assert ratio["fast_over_reference"] > 0
    assert {t["name"] for t in report["targets"]} >= {"dat_tiny inference b32: fast / reference"}

    # training: both paths stepped interleaved in each of the 2 runs; the ratio has one value per run
    assert [r["status"] for r in report["train_runs"]] == ["ok", "ok"]
    for r in report["train_runs"]:
        assert set(r["timing"]) == {"dat_tiny:fast", "dat_tiny:reference"} and len(r["rounds"]) == 1
    spread = report["train_ratio_spread"]
    assert [(s["numerator"], s["denominator"]) for s in spread] == [("dat_tiny:fast", "dat_tiny:reference")]
    assert len(spread[0]["runs"]) == 2 and spread[0]["min"] <= spread[0]["median"] <= spread[0]["max"]
    assert "ratios per interleaved run" in (out / "benchmark.md").read_text()

    assert len(report["memory"]) == 2
    for m in report["memory"]:
        assert m["status"] == "ok", m
        assert m["peak_extra_mb"] > 0

    module = report["module"]
    assert set(module["timings"]) == {"fast/forward", "reference/forward", "fast/forward_backward",
                                      "reference/forward_backward"}
    assert module["fast_vs_reference_max_abs_diff"] < 1e-3


@pytest.mark.timeout(400)
def test_datvit_bench_outside_the_checkout(tmp_path):
    """``datvit bench`` needs nothing but the installed package: run from an empty directory with only the
    package's parent directory on the path (not the checkout, so ``benchmarks/`` is not importable)."""
    import os
    import subprocess

    import datvit

    env = dict(os.environ, PYTHONPATH=str(Path(datvit.__file__).resolve().parents[1]), DATVIT_CPU_ALLOCATOR="system")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import benchmarks"], cwd=cwd, env=env, capture_output=True)
    assert probe.returncode != 0   # the checkout's benchmarks/ is out of reach
    help_text = subprocess.run([sys.executable, "-m", "datvit", "bench", "--help"], cwd=cwd, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert "--train-runs" in help_text and "examples:" in help_text
    subprocess.run([sys.executable, "-m", "datvit", "bench", "--models", "dat_tiny", "--paths", "fast",
                    "--no-module", "--no-flops", "--no-chart", "--no-train-memory", *SMOKE_ARGS],
                   cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=140)
    report = json.loads((cwd / "benchmark_results" / "benchmark.json").read_text())
    assert {(r["label"], r["kind"]) for r in report["results"]} == {("dat_tiny:fast", "inference"),
                                                                     ("dat_tiny:fast", "train")}


def test_bench_bad_model_is_one_line(capsys):
    from datvit.cli.main import main

    assert main(["bench", "--models", "no_such_model"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "datvit bench: error: --models: unknown model(s) no_such_model (DAT variants: `datvit models`; or any timm "
        "model name)"]


def test_onnxruntime_rows():
    """The onnxruntime subject: exported with datvit.tools.export.export_onnx, timed next to eager, its ratio."""
    pytest.importorskip("onnxruntime")
    import torch

    from datvit.tools.benchmark import common, report as rep, run

    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2)).eval()
    subject = common.Subject("tiny")
    x = torch.randn(2, 3, 16, 16)
    fns, sessions, report = {}, {}, {"notes": []}
    cfg = {"onnx_models": ["tiny", "absent"], "img_size": 16}
    added = run._onnxruntime_subjects(cfg, [subject], {subject: tiny}, x, fns, sessions, report)
    assert [s.label for s in added] == ["tiny:onnxruntime"] and report["notes"] == []
    session = sessions["tiny:onnxruntime"]
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), tiny(x), atol=1e-5, rtol=1e-5)
    fns["tiny:onnxruntime"]()
    rows = [dict(model="tiny", path="timm", mode="eager", kind="inference", batch=2, images_per_s=10.0),
            dict(model="tiny", path="onnxruntime", mode="eager", kind="inference", batch=2, images_per_s=15.0)]
    assert rep.onnxruntime_ratios(rows)[0]["onnxruntime_over_eager"] == 1.5


def test_cli_registers_bench():
    from datvit.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--models", "dat_tiny"])
    assert args.quick and args.models == "dat_tiny" and callable(args.func)


def test_deploy_benchmark_times_the_chosen_treatments(capsys):
    """``python -m benchmarks.deploy`` smoke: the treatments are validated, fp32 eager is always the baseline, and
    a chosen subset is built and timed (dat_tiny at batch 1, one round)."""
    from benchmarks import deploy
    from datvit.layers.ops import cpu_native_bf16

    with pytest.raises(SystemExit):
        deploy.main(["--treatments", "fp64 eager", "--speed-models", ""])
    assert capsys.readouterr().err.count("unknown treatments") == 1
    chosen = ("fp32 eager", "bf16 eager") if cpu_native_bf16() else ("fp32 eager",)
    rows = deploy.speed(["dat_tiny"], batch=1, iters=1, chosen=chosen)["rows"]
    assert set(rows) == {f"dat_tiny {t}" for t in chosen}
    assert rows["dat_tiny fp32 eager"]["vs_fp32_eager"] == 1.0
    assert all(r["images_per_s"] > 0 for r in rows.values())


def test_cuda_check_script_runs_on_cpu(tmp_path):
    """``benchmarks.cuda_check`` (issue 11's GPU checks as one script) tried on CPU, as it must be before a GPU
    session: both families pass fast-vs-reference logits and every gradient, and bf16 autocast."""
    from benchmarks import cuda_check

    rc = cuda_check.main(["--device", "cpu", "--img-size", "64", "--batch", "1", "--no-speed", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "cuda_check.json").read_text())
    assert rc == 0 and [m["model"] for m in report["models"]] == ["dat_tiny", "datpp_tiny"]
    for row in report["models"]:
        assert row["pass"] and row["logits_rel_max"] < 1e-4 and row["grad_rel_max"] < 1e-3
    assert any(n.endswith("rpb") for n in report["models"][1]["grad_rel_position_biases"])
    assert any(n.endswith("rpe_table") for n in report["models"][0]["grad_rel_position_biases"])
    import torch
    if not torch.cuda.is_available():          # says so instead of failing somewhere inside
        assert cuda_check.main(["--device", "cuda", "--no-speed", "--out", str(tmp_path)]) == 2
