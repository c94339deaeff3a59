"""The DeformableAttention module alone, at dat_tiny's stage-3 shapes: the fast path (B×H×W×C) against the
reference path (the authors' algorithm, B×C×H×W), forward and forward+backward. ``datvit bench`` times it (the
report's module section) and :mod:`.profile` profiles it."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import common

# dat_tiny stage 3 at 224: 14×14 map, 384 channels, 12 heads, 3 offset groups, offset kernel 5, stride 1.
MODULE_CONFIG = dict(
    dim=384, heads=12, groups=3, fmap_size=14, stride=1, ksize=5, offset_range_factor=2, use_pe=True, generation="v1"
)
PASSES = ("forward", "forward_backward")


def shape(batch: int) -> str:
    c = MODULE_CONFIG
    return f"B={batch}, C={c['dim']}, {c['fmap_size']}×{c['fmap_size']}, heads {c['heads']}, groups {c['groups']}"


def module_case(batch: int, device):
    """The benchmarked DeformableAttention (seeded) and one input, channels-last and in the authors' layout."""
    import torch

    from datvit.layers import DeformableAttention

    torch.manual_seed(0)
    m = DeformableAttention(**MODULE_CONFIG).to(device)
    # Non-zero offsets (the model zero-initialises the last offset conv; a trained model has offsets).
    torch.nn.init.normal_(m.conv_offset[3].weight, std=0.05)
    H, C = MODULE_CONFIG["fmap_size"], MODULE_CONFIG["dim"]
    x_cl = torch.randn(batch, H, H, C, device=device)
    return m, x_cl, x_cl.permute(0, 3, 1, 2).contiguous()


def module_steps(m, x_cl, x_ref, device, autocast: Optional[str] = None) -> dict[str, Callable[[], None]]:
    """The four measured calls, keyed ``fast/forward``, ``reference/forward`` (under no_grad),
    ``fast/forward_backward`` and ``reference/forward_backward`` (one random output gradient for both paths)."""
    import torch

    g_cl = torch.randn_like(x_cl)
    grads = {"fast": g_cl, "reference": g_cl.permute(0, 3, 1, 2).contiguous()}
    steps = {}
    for impl, call, x in (("fast", m, x_cl), ("reference", m.reference_forward, x_ref)):
        xg, g = x.clone().requires_grad_(True), grads[impl]

        def forward(call=call, x=x):
            with torch.no_grad(), common.autocast_context(device, autocast):
                call(x)

        def forward_backward(call=call, xg=xg, g=g):
            m.zero_grad(set_to_none=True)
            xg.grad = None
            with common.autocast_context(device, autocast):
                out = call(xg)
            out.backward(g.to(out.dtype))

        steps[f"{impl}/forward"], steps[f"{impl}/forward_backward"] = forward, forward_backward
    return {f"{impl}/{p}": steps[f"{impl}/{p}"] for p in PASSES for impl in ("fast", "reference")}


def module_benchmark(
    device, batch: int, warmup: int, iters: int, autocast: Optional[str] = None, with_flops: bool = True
) -> dict[str, Any]:
    """Both paths timed interleaved (eval mode for the forward, train mode for forward+backward), their largest
    output difference and, ``with_flops``, the reference path's FLOPs and each timing's GFLOP/s."""
    import torch

    m, x_cl, x_ref = module_case(batch, device)
    steps = module_steps(m, x_cl, x_ref, device, autocast)
    with torch.no_grad():
        diff = (m(x_cl) - m.reference_forward(x_ref).permute(0, 2, 3, 1)).abs().max().item()
    bg: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for p in PASSES:
        m.train(p == "forward_backward")
        times.update(
            common.time_interleaved({k: f for k, f in steps.items() if k.endswith("/" + p)}, warmup, iters, device, bg)
        )
    timings = {k: common.summarize(v, batch, bg.get(k)) for k, v in times.items()}
    out: dict[str, Any] = {
        "config": dict(MODULE_CONFIG, batch=batch),
        "autocast": autocast,
        "shape": shape(batch),
        "timings": timings,
        "fast_vs_reference_max_abs_diff": diff,
    }
    if with_flops:
        out["gflop"] = {p: common.count_flops(steps[f"reference/{p}"])[0] / 1e9 for p in PASSES}
        m.zero_grad(set_to_none=True)
        for k, t in timings.items():
            t["gflops"] = out["gflop"][k.split("/")[1]] / (t["ms_median"] / 1e3)
    return out
