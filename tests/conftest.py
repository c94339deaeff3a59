"""Shared test helpers: the authors' reference data and small model configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

REFERENCE_DIR = Path(__file__).parent / "reference"
VARIANTS = [
    "dat_tiny",
    "dat_small",
    "dat_base",
    "dat_base_384",
    "datpp_tiny",
    "datpp_small",
    "datpp_base",
    "datpp_base_384",
]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def load_fixture(family: str):
    """(config, generation, state_dict, tensors) of ``fixture_<family>_reduced.safetensors``."""
    path = REFERENCE_DIR / f"fixture_{family}_reduced.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state = {k: v for k, v in tensors.items() if not k.startswith("__")}
    return json.loads(meta["config"]), meta["generation"], state, tensors


def load_manifest(variant: str) -> dict:
    return json.loads((REFERENCE_DIR / f"manifest_{variant}.json").read_text())


def reduced_kwargs(family: str, **overrides) -> dict:
    """DAT kwargs of the fixtures' reduced models (every block kind, dims 16…128)."""
    import datvit.models as m

    config, _, _, _ = load_fixture(family)
    kwargs = m.translate_authors_config(config)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="session")
def dat_fixture():
    return load_fixture("dat")


@pytest.fixture(scope="session")
def datpp_fixture():
    return load_fixture("datpp")


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "") -> None:
    """max|actual − expected| ≤ tol · max(1, max|expected|): an absolute tolerance for O(1) tensors that scales
    with tensors whose entries are large (float32 keeps ~7 significant digits whatever the magnitude)."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol:g} × {scale:.3g}"


def assert_fast_matches_reference(
    module: torch.nn.Module, x: torch.Tensor, fwd_tol: float = 1e-5, grad_tol: float = 1e-4, **kwargs
):
    """Run a layer's fast ``forward`` on channels-last ``x`` (B×H×W×C) and its ``reference_forward`` on the same
    values as B×C×H×W; assert outputs agree to ``fwd_tol`` and the gradients of input and every parameter to
    ``grad_tol`` (scaled by the gradient's magnitude). Extra outputs (e.g. positions) are returned for checks."""
    x = x.detach().requires_grad_(True)
    x_ref = x.detach().permute(0, 3, 1, 2).requires_grad_(True)
    out_fast, out_ref = module(x, **kwargs), module.reference_forward(x_ref, **kwargs)
    extra_fast = extra_ref = ()
    if isinstance(out_fast, tuple):
        (out_fast, *extra_fast), (out_ref, *extra_ref) = out_fast, out_ref
    out_ref = out_ref.permute(0, 2, 3, 1)
    assert torch.isfinite(out_fast).all()
    torch.testing.assert_close(out_fast, out_ref, atol=fwd_tol, rtol=fwd_tol)
    g = torch.randn_like(out_fast)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p for p in module.parameters() if p.requires_grad]
    grads_fast = torch.autograd.grad(out_fast, [x, *params], g)
    grads_ref = torch.autograd.grad(out_ref, [x_ref, *params], g)
    assert_close_scaled(grads_fast[0], grads_ref[0].permute(0, 2, 3, 1), grad_tol, "input")
    for name, a, b in zip(names, grads_fast[1:], grads_ref[1:]):
        assert_close_scaled(a, b, grad_tol, name)
    return out_fast, extra_fast, extra_ref


class RecordOps(TorchDispatchMode):
    """Records the ATen calls a computation dispatches: ``calls`` holds (op, dtypes of its tensor arguments),
    ``ops`` the op names, in order."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket), tuple(a.dtype for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> list[str]:
        return [name for name, _ in self.calls]


def assert_scripted_equals_eager(scripted: torch.Tensor, eager: torch.Tensor) -> None:
    """TorchScript runs eager's kernels, and alone in a process its output is bit-identical to eager's. After
    other graphs were scripted in the same process, the oneDNN projections have been seen to differ in the last
    bit (1.5e-8 on logits of order 1, DAT v1 only; not root-caused), so the check is to float32 rounding."""
    torch.testing.assert_close(scripted, eager, rtol=1e-6, atol=1e-6)


# `make test-fast` runs what is not marked slow. Slow: whole processes (training runs, torchrun, signals, the
# wheel), torch.compile and export graphs, the benchmark harness, and every variant at full size — each a second
# or more on 2 cores. What stays is every layer against its reference, the authors' fixtures and manifests, the
# checkpoint and config rules, the CLI's parsers and the small end-to-end paths.
SLOW_TESTS = (
    "tests/test_benchmarks.py",
    "tests/test_dense_cli.py",
    "tests/test_dense_signals.py",
    "tests/test_dense_train.py",
    "tests/test_dense_train_ddp.py",
    "tests/test_export.py",
    "tests/test_dense_export.py::test_unsupported_detector_formats_name_the_reason",
    "tests/test_dense_export.py::test_segmenter_dynamic_size",
    "tests/test_faults.py",
    "tests/test_packaging.py",
    "tests/test_runtime.py",
    "tests/test_train_ddp.py",
    "tests/test_train_resume.py",
    "tests/test_compile_ops.py",
    "tests/test_bf16_cpu.py::test_bf16_model_compiles_in_one_graph",
    "tests/test_deploy.py::test_compiled_with_freezing_matches_eager",
    "tests/test_flops.py::test_cli_tables_json_and_errors",
    "tests/test_layers_neighborhood.py::test_flex_attention_path_matches_reference",
    "tests/test_model_api.py::test_every_variant_forward_backward",
    "tests/test_model_api.py::test_torch_compile_fullgraph_matches_eager",
    "tests/test_ops_linear.py::test_inductor",
    "tests/test_tracing.py::test_torch_export",
    "tests/test_timm_contract.py::test_torchscript",
    "tests/test_timm_contract.py::test_fx_forward",
    "tests/test_timm_api.py::test_meta_model",
    "tests/test_timm_api.py::test_set_input_size_equals",
    "tests/test_hub.py::test_one_directory_loads_identically",
    "tests/test_experiment.py::test_quick_dense_backbones_fine_tunes_the_classification_checkpoints",
    "tests/test_experiment.py::test_parallel_runs_in_worker_processes",
    "tests/test_experiment.py::test_quick_backbones",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
