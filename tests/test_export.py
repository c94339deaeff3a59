"""tools/export.py and `datvit export`: ONNX run by onnxruntime, torch.export programs, atomic writes, and the
one-line errors of the command."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from datvit.cli.main import main
from datvit.inference import build_checkpoint
from datvit.models.factory import arch_record, build_model, resolve_model_kwargs
from datvit.tools.export import (
    ExportError,
    check_export,
    check_export_sizes,
    example_batch,
    export_onnx,
    export_sizes,
    export_torch,
    load_exported,
    resolve_input_size,
)
from test_tracing import small
from train_helpers import TINY_MODEL_KWARGS

# One export per family, traced at 64×64 and run at every size from the same file: the export size, a non-square
# one and one that is not a multiple of 32 (export_sizes: 64×64, 32×96, 40×72; padded and shifted windows, maps
# smaller than the neighborhood kernel, one-pixel stage-4 maps at 32×32). Each export takes seconds.
SIZES_64 = [(3, 64, 64), (3, 32, 96), (3, 40, 72)]


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_onnx_one_file_every_size_matches_fast_and_reference_paths(family, tmp_path):
    """Batch, height and width dynamic: onnxruntime runs the one file at batch 1 and 3 and at four sizes (the
    model's minimum among them), matching the fast path and the reference path to 1e-4; below the minimum the
    runner raises, naming it."""
    m = small(family)
    assert export_sizes(m, (3, 64, 64)) == SIZES_64
    path = export_onnx(m, tmp_path / "m.onnx", (3, 64, 64))
    graph = onnx.load(path)
    assert {"GridSample"} <= {n.op_type for n in graph.graph.node}
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == 3
    assert {p.key: p.value for p in graph.metadata_props}["datvit.min_input_size"] == "32"
    run = load_exported(path, "onnx")
    for i, size in enumerate([*SIZES_64, (3, 32, 32)]):
        x = example_batch(size, 3 if i == 0 else 1, seed=i)
        with torch.no_grad():
            fast = m(x)
            reference = m.set_reference(True)(x)
            m.set_reference(False)
        out = run(x)
        torch.testing.assert_close(out, fast, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
        if i == 1 and "openvino" in _onnx_runtimes():  # the same file in OpenVINO (CPU, f32)
            torch.testing.assert_close(load_exported(path, "onnx", "openvino")(x), fast, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="input 16×48 is too small for this exported model: .* at least 32"):
        run(example_batch((3, 16, 48), 1))


@pytest.mark.parametrize("family", ["dat", "datpp"])
def test_torch_export_one_program_every_size_and_atomic_replace(family, tmp_path):
    """The ExportedProgram takes every size ≥ the minimum (checked at three sizes and the minimum, to float32
    rounding) and refuses smaller inputs with torch.export's range check. The file replaces an earlier one
    atomically, and a failing export leaves it as it was."""
    m = small(family)
    target = tmp_path / "model.pt2"
    target.write_bytes(b"previous")
    path = export_torch(m, target, (3, 64, 64))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no staging files left behind
    checks = check_export_sizes(path, "torch-export", m, [*SIZES_64, (3, 32, 32)], batch=1)
    assert [c.input_shape[-2:] for c in checks] == [(64, 64), (32, 96), (40, 72), (32, 32)]
    assert max(c.max_abs_diff for c in checks) < 1e-5
    assert check_export(path, "torch-export", m, (3, 64, 64), batch=3).input_shape == (3, 3, 64, 64)
    with pytest.raises(Exception, match=">= 32"):
        load_exported(path, "torch-export")(example_batch((3, 64, 24), 1))
    keep = target.read_bytes()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(m, target, (3, 64, 64), opset=13)
    assert target.read_bytes() == keep


def test_static_size_graph_is_fixed(tmp_path):
    """dynamic_size=False (--static-size): H×W fixed to the export size, which runs; another size is refused."""
    m = small("dat")
    path = export_onnx(m, tmp_path / "static.onnx", (3, 48, 40), dynamic_size=False)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[2:]] == [48, 40]
    assert export_sizes(m, (3, 48, 40), dynamic_size=False) == [(3, 48, 40)]
    run = load_exported(path, "onnx")
    x = example_batch((3, 48, 40), 2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(run(x), m(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception):
        run(example_batch((3, 80, 40), 1))


def test_cli_constants_match_the_tools():
    import datvit.cli.export as cli
    import datvit.tools.export as tools

    assert cli.FORMATS == tools.FORMATS and cli.DEFAULT_OPSET == tools.DEFAULT_OPSET
    assert cli.SAMPLINGS == tools.SAMPLINGS and cli.DEFAULT_SAMPLING == tools.DEFAULT_SAMPLING
    assert cli.RUNTIMES == tools.RUNTIMES


def test_resolve_input_size():
    m = small("dat")
    assert resolve_input_size(m) == (3, 224, 224)
    assert resolve_input_size(m, [96]) == (3, 96, 96) and resolve_input_size(m, [64, 48]) == (3, 64, 48)
    with pytest.raises(ValueError, match="below this model's minimum input of 32×32"):
        resolve_input_size(m, [64, 16])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    kwargs = resolve_model_kwargs("dat_tiny", None, dict(TINY_MODEL_KWARGS), num_classes=3)
    torch.manual_seed(0)
    model = build_model("dat_tiny", kwargs).eval()
    path = tmp_path_factory.mktemp("export") / "tiny.pth"
    torch.save(
        build_checkpoint(
            model.state_dict(),
            arch=arch_record("dat_tiny", kwargs),
            data_config={
                "input_size": [3, 32, 32],
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "crop_pct": 0.9,
                "interpolation": "bicubic",
            },
        ),
        path,
    )
    return path, model


def test_cli_export_onnx_and_check(tiny_checkpoint, tmp_path, capsys):
    """The default: one graph for every size, checked at the export size, a non-square size and one that is not a
    multiple of 32; --static-size fixes the size and checks it alone."""
    path, model = tiny_checkpoint
    out = tmp_path / "sub" / "tiny.onnx"
    argv = ["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out), "--img-size", "48", "40"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3×H×W for any H, W ≥ 32 (traced at 48×40), dynamic batch" in text and "max |Δ|" in text
    checks = [line for line in text.splitlines() if line.startswith("check: onnxruntime (CPU) vs eager")]
    assert [c.split("batch ")[1].split(":")[0] for c in checks] == [
        "(2, 3, 48, 40)",
        "(2, 3, 80, 72)",
        "(2, 3, 56, 48)",
    ]
    assert all(float(c.split("max |Δ| = ")[1].split()[0]) < 1e-4 for c in checks)
    x = example_batch((3, 36, 100), 2, seed=5)
    with torch.no_grad():
        np.testing.assert_allclose(load_exported(out, "onnx")(x).numpy(), model(x).numpy(), atol=1e-4)
    assert main([*argv, "--static-size"]) == 0
    text = capsys.readouterr().out
    assert "3×48×40, dynamic batch" in text and text.count("check: ") == 1


@pytest.mark.parametrize(
    "argv,message,code",
    [
        (["--format", "onnx", "--img-size", "16"], "--img-size 16×16 is below this model's minimum input of 32×32", 2),
        (["--format", "onnx", "--opset", "13"], "--opset 13 is too old", 2),
        (["--format", "onnx", "--img-size", "1", "2", "3"], "--img-size takes H or H W", 2),
    ],
)
def test_cli_export_bad_arguments_one_line(tiny_checkpoint, tmp_path, capsys, argv, message, code):
    path, _ = tiny_checkpoint
    out = tmp_path / "x.onnx"
    assert main(["export", "--checkpoint", str(path), "--output", str(out), *argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("datvit export: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_export_unwritable_output_and_unknown_format(tiny_checkpoint, tmp_path, capsys):
    path, _ = tiny_checkpoint
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(a_file / "m.onnx")]) == 2
    assert "cannot create directory" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(path), "--format", "tflite", "--output", str(tmp_path / "m")])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_missing_onnxruntime_is_an_export_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    with pytest.raises(ExportError, match="needs onnxruntime"):
        load_exported(tmp_path / "m.onnx", "onnx")


# -- the GridSample-free graph (--sampling gather) and OpenVINO ---------------------------------------------------


def test_gather_formulations_equal_grid_sample():
    """The exported graphs' gather formulations, run eagerly: the D block's sampling and its position bias equal
    grid_sample (align_corners=True, zeros outside) with positions well outside the map and table, non-square maps,
    and one group or several."""
    import torch.nn.functional as F

    from datvit.layers import deformable_position_bias, query_grid
    from datvit.layers.ops import _gather_sample_export, position_bias_gather

    g = torch.Generator().manual_seed(0)
    for b, h, w, c, groups, hk, wk in [(2, 6, 7, 8, 2, 3, 4), (1, 5, 3, 6, 1, 5, 3)]:
        x = torch.randn(b, h, w, c, generator=g)
        pos = torch.rand(b * groups, hk, wk, 2, generator=g) * 3 - 1.5  # a good share outside [−1, 1]
        want = F.grid_sample(
            x.permute(0, 3, 1, 2).reshape(b * groups, c // groups, h, w), pos.flip(-1), align_corners=True
        ).reshape(b, c, hk * wk)
        torch.testing.assert_close(_gather_sample_export(x, pos, groups), want.transpose(1, 2), atol=1e-6, rtol=1e-6)
    for heads, groups, t, (h, w) in [(4, 2, 9, (5, 6)), (3, 1, 7, (4, 4))]:
        table = torch.randn(heads, t, t + 2, generator=g)
        pos = torch.rand(2, groups, 10, 2, generator=g) * 4 - 2
        grid = query_grid(h, w, "pp")
        torch.testing.assert_close(
            position_bias_gather(table, pos, grid), deformable_position_bias(table, pos, grid), atol=1e-5, rtol=1e-5
        )


def test_export_options_scope():
    from datvit.layers.tracing import export_options, export_sampling

    assert export_sampling() == "grid-sample"
    with export_options(sampling="gather"):
        assert export_sampling() == "gather"
        with export_options():  # None keeps the choice
            assert export_sampling() == "gather"
    assert export_sampling() == "grid-sample"
    with pytest.raises(ValueError, match="sampling must be one of grid-sample, gather"):
        with export_options(sampling="nearest"):
            pass
    with pytest.raises(ValueError, match="--sampling 'bicubic' is not one of"):
        export_onnx(small("dat"), "unused.onnx", (3, 32, 32), sampling="bicubic")


def _onnx_runtimes() -> list[str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["onnxruntime"]
    return ["onnxruntime", "openvino"]


def test_gather_graph_has_no_grid_sample_and_runs_in_onnxruntime_and_openvino(tmp_path):
    """--sampling gather, DAT++ (DAT v1: test_cli_export_sampling_gather_checked_in_openvino, at three sizes down
    to the minimum): no GridSample in the graph; in onnxruntime and OpenVINO (when installed), at a dynamic
    batch, within 1e-5 of eager — and so of the default graph, which test_onnx_one_file_every_size_matches_fast_and_
    reference_paths holds to eager (both runtimes; ~2e-7 measured)."""
    m = small("datpp")
    x = example_batch((3, 64, 48), 3, seed=7)
    with torch.no_grad():
        eager = m(x)
    path = export_onnx(m, tmp_path / "gather.onnx", (3, 64, 48), sampling="gather")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "GridSample" not in ops and {"Gather", "GatherElements"} <= ops
    for runtime in _onnx_runtimes():
        torch.testing.assert_close(load_exported(path, "onnx", runtime)(x), eager, atol=1e-5, rtol=1e-5)


def test_cli_export_sampling_gather_checked_in_openvino(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("openvino")
    path, model = tiny_checkpoint
    out = tmp_path / "tiny_gather.onnx"
    argv = ["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out), "--sampling", "gather"]
    assert main([*argv, "--check-runtime", "openvino"]) == 0
    text = capsys.readouterr().out
    assert "GridSample-free (gather sampling)" in text and "OpenVINO (CPU, f32) vs eager" in text
    assert float(text.split("max |Δ| = ")[1].split()[0]) < 1e-4
    assert "GridSample" not in {n.op_type for n in onnx.load(out).graph.node}
    # TorchScript runs the eager kernels: --sampling is refused there, with the usual one line
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(path),
                "--format",
                "torchscript",
                "--output",
                str(tmp_path / "m.pt"),
                "--sampling",
                "gather",
            ]
        )
        == 2
    )
    assert "--sampling applies to the onnx and torch-export formats" in capsys.readouterr().err
