"""Shared piece of the torch.compile tests: compile with a backend that records dynamo's graphs."""

from __future__ import annotations

import torch


def compile_and_record(module: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """Run ``torch.compile(module, fullgraph=True)`` on ``inputs`` (after resetting dynamo) with a backend that
    keeps the graphs and runs them as they are; returns the output and the targets of their function calls."""
    torch._dynamo.reset()
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    out = torch.compile(module, backend=recording_backend, fullgraph=True)(*inputs)
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    return out, targets
