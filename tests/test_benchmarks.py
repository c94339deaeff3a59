"""Smoke test of the benchmark harness: a tiny configuration end to end (JSON, markdown and PNG written, with the
fields the report relies on). Timings are not checked."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")


@pytest.mark.timeout(120)
def test_benchmark_smoke(tmp_path):
    from benchmarks import run

    out = tmp_path / "bench"
    run.main(["--models", "dat_tiny", "--img-size", "64", "--batch-sizes", "1", "--train-batch-sizes", "1",
              "--iters", "1", "--warmup", "0", "--modes", "eager", "--no-compile", "--matmul-sizes", "128",
              "--module-batch", "1", "--train-iters", "1", "--threads", "1", "--out", str(out)])
    report = json.loads((out / "benchmark.json").read_text())
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

    assert len(report["memory"]) == 2
    for m in report["memory"]:
        assert m["status"] == "ok", m
        assert m["peak_extra_mb"] > 0

    module = report["module"]
    assert set(module["timings"]) == {"fast/forward", "reference/forward", "fast/forward_backward",
                                      "reference/forward_backward"}
    assert module["fast_vs_reference_max_abs_diff"] < 1e-3


def test_cli_registers_bench():
    from datvit.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--models", "dat_tiny"])
    assert args.quick and args.models == "dat_tiny" and callable(args.func)
