"""Smoke tests of the benchmark harness (``datvit.tools.benchmark``): a tiny configuration end to end (JSON, markdown
and PNG written, with the fields the report relies on), in process and through ``datvit bench`` from another
directory with only the package on the path; the flags as a ``BenchConfig`` and its options; the phases one by
one; the tools (``datvit bench deploy|cuda-check|levers|profile``) at toy sizes, and every tool's flags. Timings
are not checked."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")


SMOKE_ARGS = [
    "--img-size",
    "64",
    "--batch-sizes",
    "1",
    "--train-batch-sizes",
    "1",
    "--iters",
    "1",
    "--warmup",
    "0",
    "--modes",
    "eager",
    "--no-compile",
    "--matmul-sizes",
    "128",
    "--module-batch",
    "1",
    "--train-iters",
    "1",
    "--threads",
    "1",
    "--onnx-models",
    "",
]


@pytest.mark.timeout(400)
def test_benchmark_smoke(tmp_path):
    from datvit.cli.main import main

    out = tmp_path / "bench"
    assert main(["bench", "--models", "dat_tiny", "--train-runs", "2", *SMOKE_ARGS, "--output", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["command"].startswith("datvit bench --models dat_tiny")
    assert (out / "benchmark.png").stat().st_size > 1000
    assert (out / "benchmark.md").read_text().startswith("# datvit benchmark")

    machine = report["machine"]
    for key in ("cpu", "torch", "device", "torch_threads", "usable_cpus"):
        assert key in machine
    assert report["matmul_peak"]["peak_gflops"] > 0

    labels = {(r["label"], r["kind"], r["batch"]) for r in report["results"]}
    assert labels == {
        ("dat_tiny:fast", "inference", 1),
        ("dat_tiny:reference", "inference", 1),
        ("dat_tiny:fast", "train", 1),
        ("dat_tiny:reference", "train", 1),
    }
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
    assert set(module["timings"]) == {
        "fast/forward",
        "reference/forward",
        "fast/forward_backward",
        "reference/forward_backward",
    }
    assert module["fast_vs_reference_max_abs_diff"] < 1e-3


@pytest.mark.timeout(400)
def test_datvit_bench_outside_the_checkout(tmp_path):
    """``datvit bench`` needs nothing but the installed package: run from an empty directory with only the
    package's parent directory on the path (not the checkout, so ``tests`` is not importable)."""
    import os
    import subprocess

    import datvit

    env = dict(os.environ, PYTHONPATH=str(Path(datvit.__file__).resolve().parents[1]), DATVIT_CPU_ALLOCATOR="system")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import tests"], cwd=cwd, env=env, capture_output=True)
    assert probe.returncode != 0  # the checkout is out of reach
    help_text = subprocess.run(
        [sys.executable, "-m", "datvit", "bench", "--help"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--train-runs" in help_text and "examples:" in help_text and "--output DIR, --out DIR" in help_text
    subprocess.run(
        [
            sys.executable,
            "-m",
            "datvit",
            "bench",
            "--models",
            "dat_tiny",
            "--paths",
            "fast",
            "--no-module",
            "--no-flops",
            "--no-chart",
            "--no-train-memory",
            *SMOKE_ARGS,
        ],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=140,
    )
    report = json.loads((cwd / "benchmark_results" / "benchmark.json").read_text())
    assert {(r["label"], r["kind"]) for r in report["results"]} == {
        ("dat_tiny:fast", "inference"),
        ("dat_tiny:fast", "train"),
    }


def test_bench_bad_model_is_one_line(capsys):
    from datvit.cli.main import main

    assert main(["bench", "--models", "no_such_model"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "datvit bench: error: --models: unknown model(s) no_such_model (DAT variants: `datvit models`; or any timm "
        "model name)"
    ]


def test_onnxruntime_rows():
    """The onnxruntime and OpenVINO subjects: exported with datvit.tools.export.export_onnx, timed next to eager,
    their ratios."""
    pytest.importorskip("onnxruntime")
    import torch

    from datvit.tools.benchmark import common, run
    from datvit.tools.benchmark import report as rep

    torch.manual_seed(0)
    tiny = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    subject = common.Subject("tiny")
    x = torch.randn(2, 3, 16, 16)
    fns, sessions = {}, {}
    b = _bench({"onnx_models": ["tiny", "absent"], "img_size": 16})
    added = run._onnxruntime_subjects(b, {subject: tiny}, x, fns, sessions)
    assert [s.label for s in added] == ["tiny:onnxruntime"] and b.report["notes"] == []
    session = sessions["tiny:onnxruntime"]
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), tiny(x), atol=1e-5, rtol=1e-5)
    fns["tiny:onnxruntime"]()
    # the OpenVINO row runs the same file, compiled at this batch size; without openvino, one note
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert run._openvino_subjects(b, x, fns, sessions) == []
        assert b.report["notes"] == ["openvino rows skipped: openvino is not installed (pip install 'datvit[export]')"]
    else:
        added = run._openvino_subjects(b, x, fns, sessions)
        assert [s.label for s in added] == ["tiny:openvino"] and b.report["notes"] == []
        out = sessions["tiny:openvino@2"](x.numpy())[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), tiny(x), atol=1e-5, rtol=1e-5)
        fns["tiny:openvino"]()
    rows = [
        dict(model="tiny", path="timm", mode="eager", kind="inference", batch=2, images_per_s=10.0),
        dict(model="tiny", path="onnxruntime", mode="eager", kind="inference", batch=2, images_per_s=15.0),
        dict(model="tiny", path="openvino", mode="eager", kind="inference", batch=2, images_per_s=25.0),
    ]
    assert rep.onnxruntime_ratios(rows)[0]["onnxruntime_over_eager"] == 1.5
    assert rep.onnxruntime_ratios(rows, runtime="openvino")[0]["openvino_over_eager"] == 2.5


def test_cli_registers_bench():
    """``datvit bench [flags]`` is the benchmark itself (no tool), whose flags become a BenchConfig that records
    the command; a flag not given keeps the config's default."""
    from datvit.cli.bench import bench_config
    from datvit.cli.main import build_parser
    from datvit.tools.benchmark.run import BenchConfig

    args = build_parser().parse_args(["bench", "--quick", "--models", "dat_tiny", "--no-chart", "--note", "a b"])
    assert args.tool is None and args.quick and args.models == ("dat_tiny",) and callable(args.func)
    config = bench_config(bench_parser(), args)
    assert config == BenchConfig(
        quick=True,
        models=("dat_tiny",),
        chart=False,
        notes=("a b",),
        command_line="datvit bench --models dat_tiny --quick --no-chart --note 'a b'",
    )
    assert BenchConfig(models="dat_tiny, swin", batch_sizes=[1, 4]).models == ("dat_tiny", "swin")


def bench_parser():

    from datvit.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["bench"]


@pytest.mark.parametrize("tool", ["profile", "levers", "deploy", "runtimes", "cuda-check", "export-all"])
def test_bench_tool_help(tool, capsys):
    """Each tool is a subcommand of ``datvit bench`` with its own help; its flags parse into its config."""
    from datvit.cli.bench import TOOLS, tool_config
    from datvit.cli.main import build_parser, main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", tool, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: datvit bench {tool} ")
    args = build_parser().parse_args(["bench", tool])
    assert args.tool == tool
    config = tool_config(tool, args)
    assert type(config).__name__ == TOOLS[tool].config and config == type(config)()  # the defaults


def test_bench_help_lists_the_tools(capsys):
    from datvit.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(
        f"    {tool} " in text for tool in ("profile", "levers", "deploy", "runtimes", "cuda-check", "export-all")
    )


def test_bench_tool_flags(capsys):
    """The tools' flags: comma- (or, for export-all, space-) separated lists, ``--batch-size`` with the old
    ``--batch`` kept, ``--output`` with ``--out``; a flag of the benchmark before a tool's name is refused; what
    writes files has ``--output``."""
    from datvit.cli.bench import tool_config
    from datvit.cli.main import build_parser, main

    parser = build_parser()
    config = tool_config(
        "profile",
        parser.parse_args(["bench", "profile", "--models", "dat_tiny", "--batch", "8", "--no-module", "--out", "p"]),
    )
    assert (config.models, config.batch_size, config.module, config.output) == (("dat_tiny",), 8, False, "p")
    config = tool_config("levers", parser.parse_args(["bench", "levers", "adamw", "dwconv", "-b", "4"]))
    assert (config.levers, config.batch_size) == (("adamw", "dwconv"), 4)
    config = tool_config(
        "export-all",
        parser.parse_args(["bench", "export-all", "--models", "dat_tiny", "datpp_tiny,dat_small", "--formats", "onnx"]),
    )
    assert (config.models, config.formats) == (("dat_tiny", "datpp_tiny", "dat_small"), ("onnx",))
    config = tool_config("deploy", parser.parse_args(["bench", "deploy", "--treatments", "fp32 eager, bf16 eager"]))
    assert config.treatments == ("fp32 eager", "bf16 eager")
    assert main(["bench", "export-all", "--formats", "onnx,zip"]) == 2
    assert capsys.readouterr().err.startswith("datvit bench export-all: error: unknown format(s) zip")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "profile"])
    assert exit_.value.code == 2 and "--quick: a flag of the benchmark itself" in capsys.readouterr().err
    tools = next(a for a in bench_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for tool in ("profile", "deploy", "cuda-check"):
        assert "--output DIR, --out DIR" in tools[tool].format_help()


def test_deploy_benchmark_times_the_chosen_treatments(capsys):
    """``datvit bench deploy`` smoke: the treatments are validated, fp32 eager is always the baseline, and a
    chosen subset is built and timed (dat_tiny at batch 1, one round)."""
    from datvit.cli.main import main
    from datvit.layers.ops import cpu_native_bf16
    from datvit.tools.benchmark import deploy

    assert main(["bench", "deploy", "--treatments", "fp64 eager", "--speed-models", ""]) == 2
    assert capsys.readouterr().err.strip() == (
        f"datvit bench deploy: error: unknown treatments ['fp64 eager']; choose from {', '.join(deploy.TREATMENTS)}"
    )
    chosen = ("fp32 eager", "bf16 eager") if cpu_native_bf16() else ("fp32 eager",)
    rows = deploy.speed(["dat_tiny"], batch=1, iters=1, chosen=chosen)["rows"]
    assert set(rows) == {f"dat_tiny {t}" for t in chosen}
    assert rows["dat_tiny fp32 eager"]["vs_fp32_eager"] == 1.0
    assert all(r["images_per_s"] > 0 for r in rows.values())


def test_cuda_check_script_runs_on_cpu(tmp_path, capsys):
    """``datvit bench cuda-check`` (the GPU checks as one command) tried on CPU, as it must be before a GPU
    session: both families pass fast-vs-reference logits and every gradient, and bf16 autocast."""
    from datvit.cli.main import main

    rc = main(
        [
            "bench",
            "cuda-check",
            "--device",
            "cpu",
            "--img-size",
            "64",
            "--batch-size",
            "1",
            "--no-speed",
            "--output",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "cuda_check.json").read_text())
    assert rc == 0 and [m["model"] for m in report["models"]] == ["dat_tiny", "datpp_tiny"]
    for row in report["models"]:
        assert row["pass"] and row["logits_rel_max"] < 1e-4 and row["grad_rel_max"] < 1e-3
    assert any(n.endswith("rpb") for n in report["models"][1]["grad_rel_position_biases"])
    assert any(n.endswith("rpe_table") for n in report["models"][0]["grad_rel_position_biases"])
    import torch

    if not torch.cuda.is_available():  # says so instead of failing somewhere inside
        capsys.readouterr()
        assert main(["bench", "cuda-check", "--device", "cuda", "--no-speed", "--output", str(tmp_path)]) == 2
        assert capsys.readouterr().err.startswith("datvit bench cuda-check: error: no CUDA device here")


def _bench(cfg: dict, out_dir: Path = Path("unused")):
    """A run's state without its phases: the options ``cfg`` over the smoke test's, on the CPU."""
    import torch

    from datvit.tools.benchmark import run

    config = bench_config(*SMOKE_ARGS, "--output", str(out_dir))
    full = run.resolve_options(config, torch.device("cpu"))
    full.update(cfg)
    return run.Bench(config, full, torch.device("cpu"), 1, out_dir, {"notes": []})


def bench_config(*argv: str):
    """``datvit bench ARGV`` as its BenchConfig."""
    from datvit.cli.bench import bench_config as from_args
    from datvit.cli.main import build_parser

    return from_args(bench_parser(), build_parser().parse_args(["bench", *argv]))


def test_options_quick_and_output_alias():
    """``--quick`` shrinks only the defaults; ``--out`` still names the output directory; bad values are errors."""
    import torch

    from datvit.tools.benchmark import run

    cpu = torch.device("cpu")
    cfg = run.resolve_options(bench_config("--quick", "--models", "dat_tiny,swin"), cpu)
    assert cfg["models"] == ["dat_tiny", "swin_tiny_patch4_window7_224"]
    assert (cfg["batch_sizes"], cfg["train_batch_sizes"], cfg["iters"], cfg["train_runs"]) == ([1, 8], [8], 2, 1)
    assert cfg["modes"] == ["eager"]
    assert run.resolve_options(bench_config("--quick", "--batch-sizes", "4"), cpu)["batch_sizes"] == [4]
    assert run.resolve_options(bench_config("--train-batch-sizes", "0"), cpu)["train_batch_sizes"] == []
    assert bench_config("--out", "x").output == "x" and bench_config("--output", "y").output == "y"
    for bad in (["--paths", "fastest"], ["--modes", "fp8"], ["--skip", "dat_tiny:fast"]):
        with pytest.raises(ValueError):
            run.resolve_options(bench_config(*bad), cpu)
    with pytest.raises(ValueError, match="unknown model"):
        run.resolve_options(run.BenchConfig(models=("no_such_model",)), cpu)


def test_phases_in_process(tmp_path):
    """The in-process phases one by one on dat_tiny at 64×64: subjects share weights, FLOPs are counted for both
    paths, the paths agree, and every inference row gets its GFLOP/s and fraction of the matmul peak."""
    from datvit.tools.benchmark import run

    b = _bench({"models": ["dat_tiny"], "onnx_models": []}, tmp_path)
    run.measure_matmul_peak(b)
    models = run.build_subjects(b)
    fast, ref = models.values()
    assert [s.label for s in models] == ["dat_tiny:fast", "dat_tiny:reference"] and fast is not ref
    assert all(
        (p.data_ptr() != q.data_ptr()) and bool((p == q).all()) for p, q in zip(fast.parameters(), ref.parameters())
    )
    run.count_flops(b, models)
    assert b.flops["dat_tiny"]["executed_fast_forward_gflop"] > 0
    run.check_consistency(b, models)
    assert b.report["consistency"]["dat_tiny"]["max_abs_logit_diff"] < 1e-3
    run.time_inference(b, models)
    assert [(r["label"], r["kind"], r["batch"]) for r in b.report["results"]] == [
        ("dat_tiny:fast", "inference", 1),
        ("dat_tiny:reference", "inference", 1),
    ]
    assert all(r["gflops"] > 0 and r["fraction_of_peak"] > 0 for r in b.results)
    assert (tmp_path / "benchmark.partial.json").exists()


def test_compile_batches_and_skips(monkeypatch, tmp_path):
    """Which compile measurements and memory processes a configuration asks for (workers replaced by a stub)."""
    from datvit.tools.benchmark import common, run, worker

    tasks = []
    monkeypatch.setattr(worker, "run_in_subprocess", lambda task, **kw: tasks.append(task) or {"status": "error"})
    b = _bench(
        {
            "modes": ["eager", "compile"],
            "compile_models": ["dat_tiny", "swin"],
            "compile_kinds": ["inference", "train"],
            "batch_sizes": [1, 4],
            "train_batch_sizes": [2],
            "skip": ["swin_t:train"],
        },
        tmp_path,
    )
    run.time_compile(b)
    assert [(t["model"], t["path"], t["kind"], t["batch"]) for t in tasks] == [
        ("dat_tiny", "fast", "inference", 4),
        ("dat_tiny", "fast", "train", 2),
        ("swin_tiny_patch4_window7_224", "timm", "inference", 4),
        ("swin_tiny_patch4_window7_224", "timm", "train", 2),
    ]
    assert [c["status"] for c in b.report["compile"]] == ["error"] * 4 and b.results == []
    tasks.clear()
    run.measure_training_memory(b, [common.Subject("dat_tiny", "fast"), common.Subject("swin_tiny_patch4_window7_224")])
    assert [t["task"] for t in tasks] == ["memory"]
    assert [m["status"] for m in b.report["memory"]] == ["error", "skipped (--skip)"]


def test_levers_and_profile_tools(tmp_path, capsys):
    """The A/B helper of ``levers``, an unknown lever, and a profile of the DeformableAttention module (batch 1)."""
    from datvit.cli.main import main
    from datvit.tools.benchmark import levers

    res = levers.ab({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, pairs=3, warmup=1)
    assert res["a"]["speedup"] == 1.0 and res["b"]["min"] <= res["b"]["speedup"] <= res["b"]["max"]
    assert main(["bench", "levers", "no_such_lever"]) == 2
    assert capsys.readouterr().err.startswith("datvit bench levers: error: unknown lever(s) no_such_lever")
    with pytest.raises(ValueError):
        levers.run(levers.LeversConfig(levers=("no_such_lever",)))
    assert (
        main(
            [
                "bench",
                "profile",
                "--only-module",
                "--module-batch",
                "1",
                "--rows",
                "3",
                "--threads",
                "1",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "profile_summary.json").read_text())
    assert sorted(summary) == sorted(
        f"deformable_attention_{i}_{p}_b1" for i in ("fast", "reference") for p in ("forward", "forward_backward")
    )


def test_runtimes_tool(tmp_path, capsys):
    """``datvit bench runtimes``: a DAT model and a timm model in eager, ONNX Runtime and OpenVINO (when installed),
    interleaved; ratios against the baseline and against the model's own eager speed; ONNX Runtime's profile."""
    pytest.importorskip("onnxruntime")
    from datvit.cli.main import main

    code = main(
        ["bench", "runtimes", "--models", "dat_tiny,resnet10t", "--baseline", "resnet10t", "--img-size", "32"]
        + ["--batch-sizes", "1", "--rounds", "1", "--profile-rounds", "1", "--output", str(tmp_path)]
    )
    assert code == 0
    report = json.loads((tmp_path / "runtimes.json").read_text())
    runtimes = {"eager", "onnxruntime"} | ({"openvino"} if importlib.util.find_spec("openvino") else set())
    assert {(r["model"], r["runtime"]) for r in report["results"]} == {
        (m, r) for m in ("dat_tiny", "resnet10t") for r in runtimes
    }
    ratio = {(r["model"], r["runtime"]): r for r in report["ratios"]}
    assert ratio[("resnet10t", "onnxruntime")]["vs_baseline"] == 1.0
    assert ratio[("dat_tiny", "eager")]["vs_own_eager"] is None
    assert ratio[("dat_tiny", "onnxruntime")]["vs_own_eager"] > 0
    profile = report["profiles"]["dat_tiny"]
    assert profile["ms_per_call"] > 0 and abs(sum(t["share"] for t in profile["by_type"]) - 1) < 1e-6
    assert "| dat_tiny | onnxruntime | 1 |" in (tmp_path / "runtimes.md").read_text()


def test_ort_profile_summary(tmp_path):
    """ONNX Runtime's profile JSON → ms per call by node type and the heaviest nodes."""
    from datvit.tools.benchmark.runtimes import summarize_ort_profile

    def node(op, name, us):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "args": {"op_name": op}}

    events = [node("MatMul", "a", 300), node("MatMul", "b", 100), node("GridSample", "c", 600)]
    events.append({"cat": "Session", "name": "model_run", "dur": 5000})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    summary = summarize_ort_profile(str(path), calls=2)
    assert summary["ms_per_call"] == 0.5
    assert [(t["op"], t["share"]) for t in summary["by_type"]] == [("GridSample", 0.6), ("MatMul", 0.4)]
    assert summary["top_nodes"][0]["node"] == "c" and summary["top_nodes"][0]["ms"] == 0.3


def test_bf16_gap_variants_take_away_one_part_each():
    """``bench levers bf16_gap``'s subjects (eager, 64²): the dat_tiny variants share dat_tiny's weights and each
    takes away what its label says — removing the position bias changes the logits, the offset network is replaced by
    zeros of its output's shape, and ``no_off`` drops the sampling (which changes the logits again: v1's reference
    points are not pixel centres); the window net and Swin-T have no D blocks."""
    import torch

    from datvit.layers import DeformableAttention
    from datvit.tools.benchmark import levers

    models = levers.bf16_gap_models(img_size=64)
    assert list(models) == [
        "dat_tiny",
        "− position bias",
        "− bias, offset network",
        "− bias, offsets, sampling",
        "D blocks → L (windows)",
        "Swin-T (timm)",
    ]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = {k: m.eval()(x) for k, m in models.items()}
    d_blocks = {k: [m for m in model.modules() if isinstance(m, DeformableAttention)] for k, model in models.items()}
    assert all(len(d_blocks[k]) == 4 for k in list(models)[:4])
    assert d_blocks["D blocks → L (windows)"] == [] and d_blocks["Swin-T (timm)"] == []
    assert all(m.rpe_table is not None for m in d_blocks["dat_tiny"])
    assert all(m.rpe_table is None for k in list(models)[1:4] for m in d_blocks[k])
    assert all(m.no_off for m in d_blocks["− bias, offsets, sampling"])
    q = torch.randn(2, 4, 4, d_blocks["dat_tiny"][0].dim)
    zero = d_blocks["− bias, offset network"][0]._offsets_channels_last(q)
    assert zero.shape == d_blocks["dat_tiny"][0]._offsets_channels_last(q).shape and not zero.any()
    assert not torch.allclose(out["dat_tiny"], out["− position bias"])
    assert not torch.allclose(out["− bias, offset network"], out["− bias, offsets, sampling"])
