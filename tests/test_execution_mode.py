"""``datvit.layers.tracing.execution_mode``: the one answer to "how is this call being run" — eager on CPU or on
another device, torch.compile, torch.fx or torch.jit tracing, TorchScript, torch.export — and the fast-path
switches that read it (the oneDNN projection, the fused GELU, the D block's sampling, the explicit attention
layouts, flex_attention), each checked against the mode it is told and, for the two CPU fast paths, under the real
tracer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compile_helpers import compile_and_record
from conftest import RecordOps
from datvit.layers import NeighborhoodAttention2D, attention, ops
from datvit.layers.tracing import ExecutionMode, execution_mode

MODES = list(ExecutionMode)
CODES = {mode: float(i) for i, mode in enumerate(MODES)}


class Probe(nn.Module):
    """Returns x plus the code of the mode its forward sees (a constant in any recorded graph) and, where Python
    runs, appends the mode to ``seen``."""

    def __init__(self):
        super().__init__()
        self.seen: list[ExecutionMode] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = execution_mode(x)
        if not torch.compiler.is_compiling():  # dynamo would replay the append after its graph
            self.seen.append(mode)
        return x + CODES[mode]


def _code(out: torch.Tensor) -> ExecutionMode:
    return MODES[int(out.flatten()[0].item())]


def test_eager_cpu_and_other_devices():
    assert execution_mode(torch.zeros(2)) is ExecutionMode.EAGER_CPU
    assert execution_mode() is ExecutionMode.EAGER_CPU  # the default device
    assert execution_mode(torch.zeros(2, device="meta")) is ExecutionMode.EAGER_OTHER
    with torch.device("meta"):
        assert execution_mode() is ExecutionMode.EAGER_OTHER
    assert _code(Probe()(torch.zeros(2))) is ExecutionMode.EAGER_CPU
    assert [m for m in MODES if m.is_eager] == [ExecutionMode.EAGER_CPU, ExecutionMode.EAGER_OTHER]


def test_compiled():
    torch._dynamo.reset()
    probe = Probe()
    out = torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(2))  # fullgraph: no graph break
    assert _code(out) is ExecutionMode.COMPILED


def test_fx_symbolic_trace():
    probe = Probe()
    gm = torch.fx.symbolic_trace(probe)
    assert probe.seen == [ExecutionMode.FX_TRACING]
    assert _code(gm(torch.zeros(2))) is ExecutionMode.FX_TRACING


def test_jit_trace():
    probe = Probe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated upstream; and its check run is eager, so it differs
        traced = torch.jit.trace(probe, (torch.zeros(2),), check_trace=False)
    assert probe.seen == [ExecutionMode.JIT_TRACING]
    assert _code(traced(torch.zeros(2))) is ExecutionMode.JIT_TRACING


def test_jit_script():
    def is_scripted(x: torch.Tensor) -> bool:
        return execution_mode(x) == ExecutionMode.SCRIPTED

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(is_scripted)
    assert scripted(torch.zeros(2)) and not is_scripted(torch.zeros(2))


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export(strict):
    program = torch.export.export(Probe(), (torch.zeros(2),), strict=strict)
    assert _code(program.module()(torch.zeros(2))) is ExecutionMode.EXPORTING


# -- the fast-path switches read the mode ----------------------------------------------------------------------


def _tokens(requires_grad=False):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, requires_grad=requires_grad)
    return x, torch.randn(40, 24), torch.randn(40)


def _told(monkeypatch, module, mode: ExecutionMode) -> None:
    monkeypatch.setattr(module, "execution_mode", lambda x=None: mode)


@pytest.mark.parametrize("mode", [m for m in MODES if m is not ExecutionMode.SCRIPTED], ids=lambda m: m.value)
def test_onednn_projection_and_fused_gelu_follow_the_mode(mode, monkeypatch):
    _told(monkeypatch, ops, mode)
    x, w, b = _tokens()
    operands = ops._onednn_operands(x, w, b)
    # the 1×1 convolution: eager CPU directly, compiled through the custom op; every other mode F.linear
    assert (operands is not None) == (mode in (ExecutionMode.EAGER_CPU, ExecutionMode.COMPILED))
    if operands is not None:
        assert operands[3] == (mode is ExecutionMode.COMPILED)
    # the GELU post-op: eager CPU inference only
    with torch.no_grad():
        fused = ops._post_op_operands(x, w, b)
    assert (fused is not None) == (mode is ExecutionMode.EAGER_CPU and ops._POINTWISE_CONV is not None)


@pytest.mark.parametrize("mode", [m for m in MODES if m is not ExecutionMode.SCRIPTED], ids=lambda m: m.value)
def test_sampling_and_grid_sample_follow_the_mode(mode, monkeypatch):
    _told(monkeypatch, ops, mode)
    taken = []
    for name in ("_embedding_bag_channels_last", "_gather_channels_last", "_grid_sample_op"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _f=real: taken.append(_n) or _f(*a))
    torch.manual_seed(0)
    x, pos = torch.randn(2, 6, 7, 8), torch.rand(4, 3, 3, 2) * 2 - 1
    with torch.no_grad():
        got = ops.sample_channels_last(x, pos, 2)
    expected = {
        ExecutionMode.EAGER_CPU: ["_embedding_bag_channels_last"],
        ExecutionMode.COMPILED: ["_gather_channels_last"],
    }.get(mode, [])
    assert taken == expected
    want = F.grid_sample(x.permute(0, 3, 1, 2).reshape(4, 4, 6, 7), pos.flip(-1), align_corners=True)
    torch.testing.assert_close(got, want.reshape(2, 8, 9).transpose(1, 2), rtol=1e-6, atol=1e-6)
    taken.clear()
    ops.grid_sample_bilinear(x.permute(0, 3, 1, 2), pos[:2])
    assert taken == (["_grid_sample_op"] if mode is ExecutionMode.COMPILED else [])


@pytest.mark.parametrize("mode", [m for m in MODES if m is not ExecutionMode.SCRIPTED], ids=lambda m: m.value)
def test_attention_layouts_and_flex_attention_follow_the_mode(mode, monkeypatch):
    import datvit.layers.neighborhood_attention as na

    _told(monkeypatch, attention, mode)
    _told(monkeypatch, na, mode)
    q = k = torch.randn(2, 3, 9, 8)
    with torch.no_grad():
        assert attention._eager_inference(q, k, torch.zeros(9, 9)) == mode.is_eager
    m = NeighborhoodAttention2D(24, 3, 3).eval()
    m.use_flex = True  # where it may run: flex_attention on CPU serves inference
    with torch.no_grad():
        allowed = m._flex_enabled(torch.zeros(1, 4, 4, 24))
    has_flex = na._flex_attention() is not None
    assert allowed == (has_flex and (mode.is_eager or mode is ExecutionMode.JIT_TRACING))


def test_cpu_fast_paths_under_the_real_tracers():
    """The oneDNN projection and the embedding_bag sampling in eager CPU; the custom ops under torch.compile;
    the same kernels in a torch.fx graph, which calls them as leaves (its output bit-identical to eager's);
    F.linear and grid_sample in the graphs of torch.jit.trace and torch.export."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            return ops.dense(ops.sample_channels_last(x, pos, 2), self.proj.weight, self.proj.bias)

    torch.manual_seed(0)
    m = Block().eval()
    args = (torch.randn(2, 6, 7, 8), torch.rand(4, 3, 3, 2) * 2 - 1)
    with torch.no_grad(), RecordOps() as rec:
        want = m(*args)
    assert any("embedding_bag" in op for op in rec.ops), rec.ops
    assert "aten.convolution" in rec.ops and "aten.addmm" not in rec.ops, rec.ops

    with torch.no_grad():
        got, targets = compile_and_record(m, *args)
    assert any("datvit.onednn_linear" in t for t in targets), targets
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    gm = torch.fx.symbolic_trace(m)
    fx_targets = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}
    assert {"dense", "sample_channels_last"} <= fx_targets and "linear" not in fx_targets, fx_targets
    with torch.no_grad(), RecordOps() as rec:
        assert torch.equal(gm(*args), want)
    assert any("embedding_bag" in op for op in rec.ops), rec.ops
    assert "aten.convolution" in rec.ops and "aten.addmm" not in rec.ops, rec.ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jit_graph = str(torch.jit.trace(m, args).graph)
    assert "aten::linear" in jit_graph and "aten::grid_sampler" in jit_graph, jit_graph
    assert "embedding_bag" not in jit_graph and "_convolution" not in jit_graph
    exported = {str(n.target) for n in torch.export.export(m, args).graph.nodes if n.op == "call_function"}
    assert any("linear" in t for t in exported) and any("grid_sampler" in t for t in exported), exported
    assert not any("datvit" in t or "embedding_bag" in t or "convolution" in t for t in exported), exported


def test_scripted_code_takes_the_eager_kernels():
    """TorchScript drops the Python-only switches; its own branch picks the same kernels (the oneDNN projection,
    the fused GELU, the embedding_bag sampling, the inference layouts), so scripted output is eager's bit for bit,
    in inference and with gradients recorded."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 16)
            self.dwc = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.bias = nn.Parameter(torch.randn(2, 9, 9))

        def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            tokens = ops.sample_channels_last(x, pos, 2)  # B×9×8
            h = ops.dense_gelu(tokens, self.proj.weight, self.proj.bias).view(2, 3, 3, 16)
            h = ops.residual_depthwise_conv(h, self.dwc.weight, self.dwc.bias, gelu=True).reshape(2, 9, 2, 8)
            q = h.transpose(1, 2)
            return attention.biased_attention(q, q, q, self.bias)

    torch.manual_seed(0)
    m = Block().eval()
    args = (torch.randn(2, 6, 7, 8), torch.rand(4, 3, 3, 2) * 2 - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(m)
    graph = str(scripted.inlined_graph)
    assert "embedding_bag" in graph and "_convolution_pointwise" in graph, graph
    with torch.no_grad():
        assert torch.equal(scripted(*args), m(*args))
    assert torch.equal(scripted(*args), m(*args))
